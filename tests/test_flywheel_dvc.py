"""The data flywheel under DVC: ``make data-update``'s base is a declared param, a rerun on the
version it made changes nothing (so nothing downstream reruns), a forced rerun gives the same
bytes, and a fresh clone with an empty cache after a history of updates recomputes the same
version from the remote, or says in one line what it lacks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run
from dvcflow import commit_all, dvc, git_clone, make, stages_ran, use_tiny_params
from imagedata import noise, write_png

from mlpipeline.core.shards import Dataset
from mlpipeline.devtools.data_update import locked_version
from mlpipeline.ingestion.splitting import SPLITS

DIGITS = Path("data/raw/digits")
LOCK = Path("dvc.lock")


def data_update(repo: Path) -> None:
    run(["python", "-m", "mlpipeline.devtools.data_update"], repo, env={"PYTHONPATH": str(repo / "src")})


def ingested_md5(repo: Path) -> str:
    return locked_version(repo / LOCK)


def base_param(repo: Path) -> str | None:
    return yaml.safe_load((repo / "params.yaml").read_text())["ingest"]["base"]


def splits(repo: Path) -> dict[str, str]:
    """Each live image's split, by its pixels (read through the reader every stage uses)."""
    dataset = Dataset(repo / "data" / "ingested")
    found = {}
    for split in SPLITS:
        for images, _ in dataset.iter_shards(split):
            found.update({hashlib.sha256(image.tobytes()).hexdigest(): split for image in images})
    return found


def grow(repo: Path, count: int, first_seed: int) -> None:
    """``count`` new digits-like images, named among the old ones (``0005a.png`` sorts after ``0005``)."""
    for index in range(count):
        write_png(repo / DIGITS / str(index % 10) / f"{index:04d}a.png", noise(first_seed + index))


def relabel(repo: Path, names: list[str]) -> None:
    for name in names:
        path = repo / DIGITS / name
        path.rename(repo / DIGITS / str((int(path.parent.name) + 1) % 10) / path.name)


def local_remote(repo: Path, folder: Path) -> None:
    """The repository's default remote, a folder: committed, as a team's bucket would be."""
    dvc(repo, "remote", "add", "-f", "-d", "storage", str(folder))
    commit_all(repo, "a local remote")


@pytest.fixture
def history(pipeline_repo: Path, tmp_path: Path) -> Path:
    """Three data versions made by the weekly flow (growth, then a relabel and a removal), each
    committed and pushed to a folder remote."""
    repo = pipeline_repo
    use_tiny_params(repo)
    local_remote(repo, tmp_path / "remote")
    dvc(repo, "repro", "synthesize")
    commit_all(repo, "version 1")
    dvc(repo, "push")
    grow(repo, 18, 50_000)  # 1% of 1,797
    data_update(repo)
    dvc(repo, "repro", "synthesize")
    commit_all(repo, "version 2")
    dvc(repo, "push")
    relabel(repo, ["3/0003.png", "7/0007.png"])
    (repo / DIGITS / "5" / "0005.png").unlink()
    data_update(repo)
    dvc(repo, "repro", "synthesize")
    commit_all(repo, "version 3")
    dvc(repo, "push")
    return repo


@pytest.mark.slow
def test_data_update_declares_the_base_and_reruns_nothing_downstream(history: Path) -> None:
    repo = history
    shown = make(repo, "data-diff", "BASE=HEAD~1").stdout  # version 3 against version 2
    assert "1 removed, 2 relabelled, 0 moved." in shown
    assert "`4/0003.png` (3 -> 4)" in shown and "`8/0007.png` (7 -> 8)" in shown and "`5/0005.png`" in shown
    assert base_param(repo) is not None
    before = ingested_md5(repo)
    data_update(repo)  # advanced onto the version it made, with no change in the source
    assert base_param(repo) == before
    assert "ingest.base" in json.dumps(json.loads(dvc(repo, "params", "diff", "--json").stdout))
    ran = dvc(repo, "repro", "synthesize").stdout
    assert stages_ran(ran) == ["ingest"]  # ingest reruns (a param changed), its output is the same
    assert ingested_md5(repo) == before
    commit_all(repo, "base advanced")

    dvc(repo, "repro", "--force", "ingest")  # a forced rerun at the same commit: the same bytes
    assert run(["git", "status", "--porcelain", str(LOCK)], repo).stdout == ""


@pytest.mark.slow
def test_no_old_image_changed_split_along_the_history(pipeline_repo: Path) -> None:
    repo = pipeline_repo
    dvc(repo, "repro", "ingest")
    first = splits(repo)
    grow(repo, 18, 60_000)
    relabel(repo, ["1/0001.png", "2/0002.png"])
    data_update(repo)
    dvc(repo, "repro", "ingest")
    after = splits(repo)
    common = first.keys() & after.keys()
    assert len(common) == len(first) and all(first[key] == after[key] for key in common)


@pytest.mark.slow
def test_a_fresh_clone_with_an_empty_cache_recomputes_the_version_from_the_remote(
    history: Path, tmp_path: Path
) -> None:
    """Its base's files (an older version, not the one dvc.lock records) are fetched from the
    remote, only those ingest reads, and the forced rerun writes the locked bytes."""
    clone = git_clone(history, tmp_path / "clone")
    dvc(clone, "pull", "data/ingested")  # the newest version only: its base is older
    dvc(clone, "repro", "--force", "ingest")
    assert run(["git", "status", "--porcelain", str(LOCK)], clone).stdout == ""

    bare = git_clone(history, tmp_path / "bare")  # nothing pulled at all
    dvc(bare, "repro", "--force", "ingest")
    assert run(["git", "status", "--porcelain", str(LOCK)], bare).stdout == ""


@pytest.mark.slow
def test_an_empty_cache_with_no_remote_is_one_line(history: Path, tmp_path: Path) -> None:
    clone = git_clone(history, tmp_path / "clone")
    shutil.rmtree(tmp_path / "remote")
    result = dvc(clone, "repro", "--force", "ingest", check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("ingest: error:")]
    assert len(errors) == 1, result.stderr
    assert f"ingest.base {base_param(clone)}" in errors[0] and "was it pushed?" in errors[0]
    assert "Traceback" not in result.stderr
