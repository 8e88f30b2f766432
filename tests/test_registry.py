"""Model versions: ``make release`` registers them as GTO git tags, ``predict --model NAME@vX.Y.Z``
fetches them through ``dvc artifacts get`` into ``.cache/models`` and predicts with them.

The flow runs against the local S3 server on a copy of a trained history (two models); the
rules for naming a version and refusing a release run on plain repositories, fast.
"""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import gto.api
import pandas as pd
import pytest
import yaml
from conftest import GIT_ENV, run
from conftest_history import TrainedHistory
from conftest_s3 import S3Remote
from dvcflow import dvc, file_digests, git_clone, make

from mlpipeline.core.errors import PipelineError
from mlpipeline.devtools import s3server
from mlpipeline.versions.registry import CACHE_DIR, model_dir
from mlpipeline.versions.release import release

NAME = "image-classifier"
IMAGES = "data/raw/digits/3"  # committed with the repository: every clone has them


@pytest.fixture
def registry_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DVC project with two commits and no model: versions are tags, nothing is fetched."""
    from dvc.repo import Repo

    repo = tmp_path / "registry"
    repo.mkdir()
    run(["git", "init", "-q", "-b", "main"], repo)
    Repo.init(str(repo)).close()
    for message in ("one", "two"):
        (repo / "note.txt").write_text(message)
        run(["git", "add", "-A"], repo)
        run(["git", "commit", "-qm", message], repo)
    monkeypatch.chdir(repo)
    for key, value in GIT_ENV.items():  # GTO's tags are annotated: they need an identity
        monkeypatch.setenv(key, value)
    return repo


def register(repo: Path, version: str, ref: str = "HEAD") -> None:
    gto.api.register(str(repo), NAME, ref, version=version)


@pytest.mark.parametrize(
    "spec", [f"{NAME}@1.2.0", f"{NAME}@v1.2", f"{NAME}@v1.2.0.1", "@v1.2.0", f"{NAME}#", f"{NAME}@newest"]
)
def test_a_malformed_version_is_one_line_naming_it(spec: str) -> None:
    with pytest.raises(PipelineError, match=f"^{re.escape(spec)}: not a model version: expected NAME@v"):
        model_dir(spec)


def test_a_path_is_taken_as_given_whatever_it_looks_like(tmp_path: Path) -> None:
    odd = tmp_path / f"{NAME}@v1.0.0"
    odd.mkdir()
    assert model_dir(str(odd)) == odd
    assert model_dir("models") == Path("models")  # missing: the loader names it


def test_unknown_versions_and_stages_list_the_registered_ones(registry_repo: Path) -> None:
    with pytest.raises(PipelineError, match=r"has no registered version .*make release VERSION=1\.0\.0"):
        model_dir(f"{NAME}@latest")
    register(registry_repo, "v1.9.0", "HEAD~1")
    register(registry_repo, "v1.10.0")
    message = f"{NAME}@v2.0.0: '{NAME}' has no version v2.0.0 (registered: v1.9.0, v1.10.0)"
    with pytest.raises(PipelineError) as raised:
        model_dir(f"{NAME}@v2.0.0")
    assert str(raised.value) == message
    with pytest.raises(
        PipelineError, match=r"has no version in stage 'prod' \(registered: v1\.9\.0, v1\.10\.0\)"
    ):
        model_dir(f"{NAME}#prod")


def test_latest_and_stages_resolve_to_registered_versions(registry_repo: Path) -> None:
    from mlpipeline.versions.registry import resolve

    register(registry_repo, "v1.9.0", "HEAD~1")
    register(registry_repo, "v1.10.0")
    assert resolve(registry_repo, "x", NAME, None, None) == "v1.10.0"  # semver order, not text
    gto.api.assign(str(registry_repo), NAME, "prod", version="v1.9.0")
    assert resolve(registry_repo, "x", NAME, None, "prod") == "v1.9.0"


def test_outside_a_dvc_project_a_version_cannot_be_looked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match=f"^{NAME}@v1.0.0: versions are looked up in the DVC project"):
        model_dir(f"{NAME}@v1.0.0")


def test_release_refuses_a_bad_version_an_unknown_artifact_and_a_stale_model(pipeline_repo: Path) -> None:
    with pytest.raises(PipelineError, match=r"^VERSION=1\.2: not a semantic version"):
        release(pipeline_repo, NAME, "1.2")
    with pytest.raises(
        PipelineError,
        match=r"^dvc\.yaml declares no artifact 'nosuch' \(artifacts: image-classifier, "
        r"image-classifier-onnx\)",
    ):
        release(pipeline_repo, "nosuch", "1.0.0")
    # A fresh copy never ran the pipeline: there is no model to release, and no tag is made.
    with pytest.raises(
        PipelineError,
        match=r"^models, exported/model.onnx, reports/evaluate/metrics.json: not up to date \(dvc status: "
        r".*train",
    ):
        release(pipeline_repo, NAME, "1.0.0")
    assert run(["git", "tag"], pipeline_repo).stdout == ""


def predict(
    repo: Path, model: str, env: dict[str, str] | None = None, check: bool = True, onnx: bool = False
):
    return run(
        [
            sys.executable,
            "-m",
            "mlpipeline.modeling.predict",
            IMAGES,
            "--model",
            model,
            *(["--onnx"] if onnx else []),
        ],
        repo,
        check=check,
        env=env,
    )


def assert_card(repo: Path, version: str, pipeline: str) -> None:
    """The card in the tagged commit: Hugging Face metadata, and every field from what the
    pipeline at ``pipeline`` wrote (counts, params, hashes, metrics with the baseline, preprocessing)."""
    text = run(["git", "show", f"{NAME}@{version}:cards/{NAME}/README.md"], repo).stdout
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    show = lambda path: run(["git", "show", f"{pipeline}:{path}"], repo).stdout  # noqa: E731
    lock = yaml.safe_load(show("dvc.lock"))["stages"]
    metrics = json.loads(show("reports/evaluate/metrics.json"))
    assert meta["pipeline_tag"] == "image-classification" and meta["library_name"] == "onnx"
    accuracy = meta["model-index"][0]["results"][0]["metrics"][0]
    assert accuracy == {"type": "accuracy", "value": metrics["test"]["accuracy"], "name": "Accuracy"}
    record = meta["mlpipeline"]
    assert (record["version"], record["commit"], record["artifact"]) == (version, pipeline, NAME)
    assert record["params"]["train"] == lock["train"]["params"]["params.yaml"]
    assert record["dvc"]["models"] == next(o["md5"] for o in lock["train"]["outs"] if o["path"] == "models")
    assert record["dvc"]["exported"] == next(
        o["md5"] for o in lock["export"]["outs"] if o["path"] == "exported"
    )
    assert record["dvc"]["data/raw/digits"] == lock["ingest"]["deps"][0]["md5"]
    assert record["metrics"]["baseline"]["accuracy"] == metrics["baseline"]["accuracy"]
    assert record["metrics"]["test"]["macro_f1"] == metrics["test"]["macro_f1"]
    counts = record["data"]["counts"]
    assert set(counts) == {"train", "val", "test"} and set(counts["test"]) == {str(d) for d in range(10)}
    assert sum(sum(split.values()) for split in counts.values()) == 1797  # every demo digit, once
    assert record["preprocessing"]["resample"] == "bicubic" and record["preprocessing"]["rescale"] == "1/255"
    assert len(record["preprocessing"]["mean"]) == 1 and record["classes"] == [str(d) for d in range(10)]
    for section in (
        "## Intended use and limitations",
        "## Training data",
        "## Preprocessing",
        "## Provenance",
    ):
        assert section in body
    assert "| network | SVM baseline |" in body and f"`{pipeline}`" in body


def dead_endpoint(repo: Path, server: s3server.S3Server) -> None:
    """Point ``repo``'s remote at a port nobody listens on: the remote is unreachable."""
    dead = s3server.S3Server(server.root, s3server.free_port(), pid=-1)
    s3server.configure_remote(repo, dead)


@pytest.mark.slow
@pytest.mark.s3
def test_released_versions_are_fetched_from_the_remote_and_predict(
    history_repo: Path, trained_history: TrainedHistory, s3_remote: S3Remote, tmp_path: Path
) -> None:
    producer = history_repo
    models = {}
    for version, commit in (("1.0.0", trained_history.first), ("1.1.0", trained_history.second)):
        run(["git", "checkout", "-q", commit], producer)
        dvc(producer, "checkout")
        made = make(producer, "release", f"VERSION={version}")
        assert f"registered {NAME}@v{version} on the card commit above {commit[:12]}" in made.stdout, (
            made.stdout
        )
        models[f"v{version}"] = file_digests(producer / "models", [producer / "models"])
    run(["git", "checkout", "-q", "main"], producer)
    assert models["v1.0.0"] != models["v1.1.0"]
    # Each tag names the card's commit, whose parent is the pipeline's commit.
    parents = {tag: run(["git", "rev-parse", f"{NAME}@{tag}^"], producer).stdout.strip() for tag in models}
    assert parents == {"v1.0.0": trained_history.first, "v1.1.0": trained_history.second}
    assert_card(producer, "v1.0.0", trained_history.first)

    assert sorted(v["version"] for v in gto.api.show(str(producer), NAME)) == ["v1.0.0", "v1.1.0"]

    # Another machine: a clone with the tags and no DVC cache fetches each version from S3.
    consumer = git_clone(producer, tmp_path / "consumer")
    s3_remote.configure(consumer)
    tables = {version: predict(consumer, f"{NAME}@{version}").stdout for version in models}
    for version, digests in models.items():
        fetched = consumer / CACHE_DIR / NAME / version
        assert file_digests(fetched, [fetched]) == digests
    assert tables["v1.0.0"] != tables["v1.1.0"]
    assert len(pd.read_csv(io.StringIO(tables["v1.0.0"]))) == len(list((consumer / IMAGES).iterdir()))

    # The release's ONNX file, fetched by version: onnxruntime gives torch's classes.
    onnx_tables = {v: predict(consumer, f"{NAME}@{v}", onnx=True).stdout for v in models}
    for version in models:
        fetched = consumer / CACHE_DIR / NAME / f"{version}-onnx" / "model.onnx"
        run(["git", "checkout", "-q", f"{NAME}@{version}"], producer)
        dvc(producer, "checkout")
        assert fetched.read_bytes() == (producer / "exported" / "model.onnx").read_bytes()
        onnx_labels = pd.read_csv(io.StringIO(onnx_tables[version]))["label"]
        assert list(onnx_labels) == list(pd.read_csv(io.StringIO(tables[version]))["label"])
    run(["git", "checkout", "-q", "main"], producer)

    # A fetched version is kept: the remote is no longer needed for it.
    dead_endpoint(consumer, s3_remote.server)
    assert predict(consumer, f"{NAME}@latest").stdout == tables["v1.1.0"]

    unknown = predict(consumer, f"{NAME}@v9.9.9", check=False)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        f"predict: error: {NAME}@v9.9.9: '{NAME}' has no version v9.9.9 (registered: v1.0.0, v1.1.0)"
    ]

    # A version whose files left the remote (never pushed, or collected): said plainly.
    offline = git_clone(producer, tmp_path / "offline")
    s3_remote.configure(offline)
    lock = run(["git", "show", f"{trained_history.first}:dvc.lock"], producer).stdout
    listing = re.search(r"path: models\n\s+hash: md5\n\s+md5: (\S+)", lock).group(1)
    key = f"{s3_remote.prefix}/files/md5/{listing[:2]}/{listing[2:]}"
    s3server.client(s3_remote.server.endpoint).delete_object(Bucket=s3_remote.bucket, Key=key)
    gone = predict(offline, f"{NAME}@v1.0.0", check=False)
    assert gone.returncode == 2
    (line,) = gone.stderr.strip().splitlines()
    assert line.startswith(f"predict: error: {NAME}@v1.0.0: the model's files are in neither the local DVC")
    assert f"(missing: {s3_remote.bucket}/{key}): on a machine whose DVC cache still holds them" in line

    dead_endpoint(offline, s3_remote.server)
    failed = predict(offline, f"{NAME}@v1.0.0", env={"AWS_MAX_ATTEMPTS": "1"}, check=False)
    assert failed.returncode == 2
    (line,) = failed.stderr.strip().splitlines()
    assert line.startswith(f"predict: error: {NAME}@v1.0.0: cannot fetch the model from remote 'storage' (")
    assert "127.0.0.1" in line
    assert not (offline / CACHE_DIR / NAME / "v1.0.0").exists()


@pytest.mark.slow
@pytest.mark.s3
def test_a_narrower_gc_scope_keeps_released_versions_and_a_lost_one_says_what_is_missing(
    history_repo: Path, trained_history: TrainedHistory, s3_remote: S3Remote, tmp_path: Path
) -> None:
    repo = history_repo
    run(["git", "checkout", "-q", trained_history.first], repo)
    dvc(repo, "checkout")
    make(repo, "release", "VERSION=1.0.0")
    run(["git", "checkout", "-q", "main"], repo)
    dvc(repo, "checkout")
    dvc(repo, "push")
    # -w alone keeps only the workspace (model B): model A lives on only as the release.
    listing = make(repo, "gc", "KEEP=-w", "CONFIRM=1", "CLOUD=1").stdout
    assert f"model versions (registered releases, kept by every scope): {NAME}@v1.0.0" in listing, listing
    consumer = git_clone(repo, tmp_path / "consumer")
    s3_remote.configure(consumer)
    assert predict(consumer, f"{NAME}@v1.0.0").stdout

    # Lost all the same (deleted by hand, another tool's gc): the line says what is missing and
    # how to get it back.
    remote_models = [
        key
        for key in (p.relative_to(s3_remote.directory) for p in s3_remote.directory.rglob("*") if p.is_file())
        if key.parts[0] == "files"
    ]
    client = s3server.client(s3_remote.server.endpoint)
    for key in remote_models:
        client.delete_object(Bucket=s3_remote.bucket, Key=f"{s3_remote.prefix}/{key.as_posix()}")
    elsewhere = git_clone(repo, tmp_path / "lost")
    s3_remote.configure(elsewhere)
    lost = predict(elsewhere, f"{NAME}@v1.0.0", check=False)
    assert lost.returncode == 2
    (line,) = lost.stderr.strip().splitlines()
    assert line.startswith(
        f"predict: error: {NAME}@v1.0.0: the model's files are in neither the local DVC cache nor remote"
    ), line
    assert f"git checkout {NAME}@v1.0.0 && dvc push models" in line, line
