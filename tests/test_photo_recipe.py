"""The photo recipes: the presets apply to params.yaml and validate, and the README's
bring-your-own-data path runs exactly as written on generated photos with word class names
(``mlpipeline.devtools.photos``), end to end; and with the default params, a dataset the glyph
generator cannot draw trains on its real images alone."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, repo_params, run, set_params
from dvcflow import TINY_PARAMS, dvc, flatten, stages_ran

from mlpipeline.core.errors import PipelineError
from mlpipeline.devtools.photos import write_photos
from mlpipeline.devtools.preset import apply_preset, check

PRESETS = sorted((REPO_ROOT / "presets").glob("*.yaml"))
CLASSES = ["cat0", "dog", "bird"]


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_a_preset_sets_its_values_keeps_the_rest_and_validates(preset: Path) -> None:
    original = (REPO_ROOT / "params.yaml").read_text()
    values = yaml.safe_load(preset.read_text())
    updated = apply_preset(original, values, preset)
    check(updated)
    after = flatten(yaml.safe_load(updated))
    for key, value in flatten(values).items():
        assert after[key] == value, key
    untouched = {key: value for key, value in flatten(repo_params()).items() if key not in flatten(values)}
    assert {key: after[key] for key in untouched} == untouched
    comments = [line.partition("#")[2] for line in original.splitlines()]
    assert [line.partition("#")[2] for line in updated.splitlines()] == comments  # every comment, in place


def test_a_preset_key_params_yaml_lacks_is_one_line() -> None:
    with pytest.raises(PipelineError, match=r"bad\.yaml: train\.epoch is not a key of params\.yaml"):
        apply_preset((REPO_ROOT / "params.yaml").read_text(), {"train": {"epoch": 3}}, Path("bad.yaml"))


def test_make_preset_writes_params_yaml_and_refuses_a_bad_value(tmp_path: Path) -> None:
    from test_makefile import make_in

    (tmp_path / "presets").mkdir()
    (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
    (tmp_path / "presets" / "mine.yaml").write_text("train:\n  lr: 0.01\n")
    (tmp_path / "presets" / "bad.yaml").write_text("train:\n  lr: -1\n")
    done = make_in(tmp_path, "preset", "PRESET=mine")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["train"]["lr"] == 0.01
    refused = make_in(tmp_path, "preset", "PRESET=bad")
    assert "preset: error: params.yaml: train.lr must be > 0" in refused.stderr
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["train"]["lr"] == 0.01  # left as it was


def readme_photo_commands() -> list[str]:
    """The command lines of the first bash block of the README's "Bring your own data"."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Bring your own data", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_photo_path_runs_as_written_on_photos_with_word_classes(pipeline_repo: Path) -> None:
    write_photos(pipeline_repo / "data" / "raw" / "photos", CLASSES, per_class=30)
    venv = Path(sys.prefix)
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "PYTHONPATH": str(pipeline_repo / "src"),
        "MAKEFLAGS": f"-o{venv / '.installed'} -- VENV={venv}",  # the test run's venv, taken as set up
    }
    commands = readme_photo_commands()
    assert commands[0].startswith("make preset PRESET=photos-small")
    done = run(["bash", "-euo", "pipefail", "-c", "\n".join(commands)], pipeline_repo, env=env, timeout=1800)
    assert set(stages_ran(done.stdout)) == {"ingest", "synthesize", "augment", "train", "export", "evaluate"}
    model = json.loads((pipeline_repo / "models" / "model.json").read_text())
    assert sorted(model["classes"]) == sorted(CLASSES) and model["image_shape"] == [3, 32, 32]
    assert (
        model["preprocessing"]["image_size"] == [40, 40]
        and model["preprocessing"]["resize"] == "shorter-side"
    )
    metrics = json.loads((pipeline_repo / "reports" / "evaluate" / "metrics.json").read_text())
    assert sorted(metrics["test"]["per_class"]) == sorted(CLASSES)  # what it scores: bench/photos.py
    parity = json.loads((pipeline_repo / "reports" / "export" / "parity.json").read_text())
    assert parity["different_classes"] == 0 and parity["images"] == sum(
        row["support"] for row in metrics["test"]["per_class"].values()
    )
    assert run(["git", "status", "--porcelain"], pipeline_repo).stdout == ""  # everything committed
    assert dvc(pipeline_repo, "status").stdout.strip() == "Data and pipelines are up to date."


@pytest.mark.slow
def test_default_params_train_word_classes_on_their_real_images_alone(pipeline_repo: Path) -> None:
    write_photos(pipeline_repo / "data" / "photos", CLASSES, per_class=40)
    set_params(pipeline_repo, flatten(yaml.safe_load(TINY_PARAMS.read_text())))
    set_params(pipeline_repo, {"ingest.source": "data/photos", "ingest.channels": 3, "ingest.image_size": 16})
    done = dvc(pipeline_repo, "repro")
    assert "no images: class 'bird' is not a single character, so the glyphs generator cannot draw it" in (
        done.stderr
    )
    assert "pretrain" not in done.stderr  # no pretraining phase on nothing
    assert json.loads((pipeline_repo / "models" / "model.json").read_text())["classes"] == sorted(CLASSES)
