"""``make weights``: MODEL and NAME reach the program as typed, never through a shell, and are
checked there before anything is removed or downloaded; a download that cannot land leaves
nothing behind. The hub is a stand-in here: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
from test_makefile import make_in
from test_models_hf import save_checkpoint

from mlpipeline.core.errors import PipelineError
from mlpipeline.devtools import fetch_weights

CHARACTERS = "letters, digits, '-', '_' and '.', no '--' or '..'"
NOT_A = {
    "MODEL": f"not a hub id (owner/name: {CHARACTERS})",
    "NAME": f"not a plain folder name (one folder of data/weights: {CHARACTERS})",
}


@pytest.fixture
def downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hub ids asked for, each answered with a tiny checkpoint; the test runs in a workspace
    whose data/weights exists, as in the repository."""
    asked: list[str] = []

    def fake_download(repo_id: str, local_dir: Path, allow_patterns: list[str]) -> None:
        asked.append(repo_id)
        save_checkpoint(Path(local_dir))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    (tmp_path / "work" / "data" / "weights").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    return asked


@pytest.mark.parametrize(
    ("variable", "marker_in"),
    [
        ("MODEL=a/b; touch MARKER", "MODEL"),
        ("MODEL=a/b' && touch MARKER && echo '", "MODEL"),
        ("MODEL=$(shell touch MARKER)", "MODEL"),
        ("NAME=x; touch MARKER", "NAME"),
        ("NAME=$(shell touch MARKER)", "NAME"),
    ],
)
def test_make_weights_runs_nothing_a_variable_holds(tmp_path: Path, variable: str, marker_in: str) -> None:
    args = ["weights", variable] if marker_in == "MODEL" else ["weights", "MODEL=org/tiny", variable]
    done = make_in(tmp_path, *args)
    assert not (tmp_path / "MARKER").exists(), done
    assert done.returncode == 2, done
    *program, made = done.stderr.splitlines()
    assert program == [f"weights: error: {variable}: {NOT_A[marker_in]}"], done.stderr
    assert made.startswith("make: ***"), done.stderr


def test_make_weights_without_model_names_it(tmp_path: Path) -> None:
    done = make_in(tmp_path, "weights")
    assert done.returncode == 2 and done.stderr.splitlines()[0] == (
        "weights: error: MODEL is missing: `make weights MODEL=microsoft/resnet-50 [NAME=resnet-50]`"
    ), done.stderr


@pytest.mark.parametrize(
    "model",
    ["resnet-50", "a/b/c", "-a/b", "a/-b", "a/b.", "a--x/b", "a/b..c", "../b", "a/", "/b", "a/ b", "a/ü"],
)
def test_a_model_that_is_no_hub_id_is_refused(
    downloads: list[str], monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    monkeypatch.setenv("MLPIPELINE_MODEL", model)  # as make hands it over: '-a/b' is no option there
    with pytest.raises(PipelineError) as refused:
        fetch_weights.main([])
    assert str(refused.value) == f"MODEL={model}: {NOT_A['MODEL']}" and downloads == []


@pytest.mark.parametrize(
    "name",
    ["./../../victim", "../victim", "/tmp/victim", "a/b", ".hidden", "..", "a\\b", "", "a b", "-x", "x\0"],
)
def test_a_name_that_is_no_plain_folder_name_is_refused_before_anything_is_removed(
    tmp_path: Path, downloads: list[str], name: str
) -> None:
    """`--name ./../../victim` once removed victim.download two folders up, then downloaded there."""
    victims = [tmp_path / "victim.download" / "keep", tmp_path / "work" / "victim" / "keep"]
    for victim in victims:
        victim.parent.mkdir(parents=True, exist_ok=True)
        victim.write_text("mine")
    with pytest.raises(PipelineError) as refused:
        fetch_weights.main(["org/tiny", f"--name={name}"])
    assert str(refused.value) == f"NAME={name}: {NOT_A['NAME']}"
    assert downloads == [] and all(victim.read_text() == "mine" for victim in victims)


def test_a_target_folder_without_config_json_is_refused_and_nothing_is_left_behind(
    downloads: list[str],
) -> None:
    half = Path("data/weights/half")
    half.mkdir()
    (half / "model.safetensors").write_text("a fetch cut short")
    with pytest.raises(PipelineError) as refused:
        fetch_weights.main(["org/tiny", "--name", "half", "--no-dvc-add"])
    assert str(refused.value) == (
        "data/weights/half: already there, without a config.json (a fetch cut short?): remove it, "
        "then fetch again"
    )
    assert downloads == [] and sorted(p.name for p in Path("data/weights").iterdir()) == ["half"]
    assert (half / "model.safetensors").read_text() == "a fetch cut short"


def test_a_stale_download_aside_is_replaced(downloads: list[str]) -> None:
    aside = Path("data/weights/.tiny.download")
    aside.mkdir()
    (aside / "stale").write_text("from a fetch killed halfway")
    fetch_weights.main(["org/tiny", "--no-dvc-add"])
    assert sorted(p.name for p in Path("data/weights").iterdir()) == ["tiny"]
    assert not (Path("data/weights/tiny") / "stale").exists()


def test_a_failed_dvc_add_is_one_line(downloads: list[str]) -> None:
    """Outside a DVC repository `dvc add` fails: one line, the fetched folder kept."""
    with pytest.raises(PipelineError) as refused:
        fetch_weights.main(["org/tiny"])
    assert str(refused.value).startswith("dvc add data/weights/tiny failed (ERROR: ")
    assert str(refused.value).endswith(
        "): the weights are fetched into data/weights/tiny; dvc add them once that is fixed"
    )
    assert "\n" not in str(refused.value) and (Path("data/weights/tiny") / "config.json").is_file()


def test_names_come_from_the_environment_as_make_passes_them(
    downloads: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLPIPELINE_MODEL", "org/tiny-resnet")
    monkeypatch.setenv("MLPIPELINE_NAME", "mine")
    fetch_weights.main(["--no-dvc-add"])
    assert downloads == ["org/tiny-resnet"] and (Path("data/weights/mine") / "config.json").is_file()
    assert "set train.model.weights: mine" in capsys.readouterr().out
