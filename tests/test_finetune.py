"""Fine-tuning from a release (``train.model.weights: image-classifier@v1.0.0``): the release's
network fitted to the data, every tensor carried over and the head's rows moved by class name
(classes may grow and reorder), one line for what cannot carry over, moving references refused
by the version they mean today; and, on the local S3 server, a clone that fine-tunes a released
version through ``dvc repro`` with a class more."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run, set_params
from conftest_history import TrainedHistory
from conftest_s3 import S3Remote
from dvcflow import dvc, git_clone, make, stages_ran
from PIL import Image
from test_models_hf import RESNET, config_for
from test_registry import register, registry_repo  # noqa: F401 (a fixture)
from tiny_model import CLASSES, write_tiny_model

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.paths import WEIGHTS
from mlpipeline.core.seeding import seed_everything
from mlpipeline.modeling.files import load_model, save_model
from mlpipeline.modeling.finetune import Release, from_release, release_config, weights_source
from mlpipeline.modeling.network import build_model

GROWN = ["center", "new", "top", "left"]  # reordered, and a class the release never saw


def released(folder: Path) -> Release:
    return Release("image-classifier@v1.0.0", "c0ffee", folder)


def test_classes_grow_and_each_old_class_keeps_its_head_row(tmp_path: Path) -> None:
    release = released(write_tiny_model(tmp_path / "release"))
    config = release_config(release, "convnet", GROWN, [1, 8, 8], None)
    assert config.classes == GROWN and config.widths == [8] and config.pretrained["commit"] == "c0ffee"
    seed_everything(0)
    model = from_release(config, release)
    old, _ = load_model(release.folder)
    ours, theirs = model.state_dict(), old.state_dict()
    for name, tensor in theirs.items():
        if not name.startswith("head."):
            assert torch.equal(ours[name], tensor), name
    for new_index, name in enumerate(GROWN):
        if name in CLASSES:
            assert torch.equal(ours["head.3.weight"][new_index], theirs["head.3.weight"][CLASSES.index(name)])
            assert torch.equal(ours["head.3.bias"][new_index], theirs["head.3.bias"][CLASSES.index(name)])
    seed_everything(0)
    fresh = build_model(config).state_dict()  # the new class's row: the seeded initialization
    assert torch.equal(ours["head.3.weight"][1], fresh["head.3.weight"][1])
    save_model(model, config, tmp_path / "models")
    written = json.loads((tmp_path / "models" / "model.json").read_text())
    assert (
        written["pretrained"]["source"] == "image-classifier@v1.0.0"
        and len(written["pretrained"]["sha256"]) == 64
    )
    assert load_model(tmp_path / "models")[1] == config


def test_a_transformers_release_is_refitted_to_the_new_classes(tmp_path: Path) -> None:
    base = config_for("resnet", RESNET)
    torch.manual_seed(0)
    save_model(build_model(base), base, tmp_path / "release")
    release = released(tmp_path / "release")
    config = release_config(release, "resnet", GROWN, [1, 8, 8], None)
    assert config.network["id2label"] == {"0": "center", "1": "new", "2": "top", "3": "left"}
    model = from_release(config, release)
    old = load_model(release.folder)[0].state_dict()
    assert torch.equal(model.state_dict()["net.classifier.1.weight"][2], old["net.classifier.1.weight"][0])
    name = "net.resnet.embedder.embedder.convolution.weight"
    assert torch.equal(model.state_dict()[name], old[name])


@pytest.mark.parametrize(
    ("arch", "classes", "shape", "message"),
    [
        ("convnet", ["top", "left"], [1, 8, 8], "predicts center, which the data lacks"),
        ("convnet", GROWN, [3, 8, 8], "takes 1-channel images, the data has 3 (set ingest.channels: 1)"),
        ("resnet", GROWN, [1, 8, 8], "is a convnet, train.model.arch is resnet"),
    ],
)
def test_what_cannot_carry_over_is_one_line(tmp_path: Path, arch, classes, shape, message) -> None:
    release = released(write_tiny_model(tmp_path / "release"))
    with pytest.raises(PipelineError, match=r"^params.yaml: train.model.weights: image-classifier@v1.0.0 "):
        try:
            release_config(release, arch, classes, shape, None)
        except PipelineError as exc:
            assert message in str(exc) and "\n" not in str(exc)
            raise


def test_a_tensor_that_no_longer_fits_is_named(tmp_path: Path) -> None:
    release = released(write_tiny_model(tmp_path / "release"))
    config = release_config(release, "convnet", GROWN, [1, 8, 8], None)
    wider = dataclasses.replace(config, widths=[16])
    with pytest.raises(PipelineError, match=r"tensor features.0.weight is \[8, 1, 3, 3\] in the release"):
        from_release(wider, release)


def test_moving_references_are_refused_by_the_version_they_mean(registry_repo: Path) -> None:  # noqa: F811
    register(registry_repo, "v1.0.0", "HEAD~1")
    register(registry_repo, "v1.1.0")
    for spec in ("image-classifier@latest", "image-classifier#prod"):
        if spec.endswith("prod"):
            import gto.api

            gto.api.assign(str(registry_repo), "image-classifier", "prod", version="v1.0.0")
        with pytest.raises(PipelineError) as refused:
            weights_source(spec, WEIGHTS)
        exact = "v1.1.0" if "latest" in spec else "v1.0.0"
        assert str(refused.value) == (
            f"params.yaml: train.model.weights: {spec} moves (today it is image-classifier@{exact}), and DVC "
            "would keep a model trained from what it named before: name the version, "
            f"train.model.weights: image-classifier@{exact}"
        )
    assert (
        weights_source("resnet-50", WEIGHTS) == WEIGHTS / "resnet-50"
        and weights_source(None, WEIGHTS) is None
    )


def add_class(repo: Path, name: str, like: str, count: int = 40) -> None:
    """A new class folder of the demo digits: ``like``'s images, inverted (so none is a duplicate)."""
    for index, source in enumerate(sorted((repo / "data/raw/digits" / like).glob("*.png"))[:count]):
        target = repo / "data/raw/digits" / name / f"{index}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = 255 - np.asarray(Image.open(source))
        Image.fromarray(pixels.astype(np.uint8)).save(target)


@pytest.mark.slow
@pytest.mark.s3
def test_a_clone_fine_tunes_a_released_version_fetched_from_s3(
    history_repo: Path, trained_history: TrainedHistory, s3_remote: S3Remote, tmp_path: Path
) -> None:
    run(["git", "checkout", "-q", trained_history.first], history_repo)
    dvc(history_repo, "checkout")
    make(history_repo, "release", "VERSION=1.0.0")
    tag_commit = run(["git", "rev-parse", "image-classifier@v1.0.0^{commit}"], history_repo).stdout.strip()
    run(["git", "checkout", "-q", "main"], history_repo)

    clone = git_clone(history_repo, tmp_path / "clone")  # no DVC cache: the release comes from S3
    s3_remote.configure(clone)
    add_class(clone, "x", like="1")
    set_params(clone, {"train.model.weights": "image-classifier@v1.0.0"})
    ran = dvc(clone, "repro", "train")
    assert "train" in stages_ran(ran.stdout)
    written = json.loads((clone / "models" / "model.json").read_text())
    assert written["classes"] == [*(str(d) for d in range(10)), "x"]
    assert written["pretrained"]["source"] == "image-classifier@v1.0.0"
    assert written["pretrained"]["commit"] == tag_commit
    assert (clone / ".cache/models/image-classifier/v1.0.0/model.safetensors").is_file()
    assert stages_ran(dvc(clone, "repro", "train").stdout) == []  # the exact version: a true cache hit

    set_params(clone, {"train.model.weights": "image-classifier@latest"})
    refused = dvc(clone, "repro", "train", check=False)
    assert refused.returncode != 0
    assert (
        "train: error: params.yaml: train.model.weights: image-classifier@latest moves (today it is "
        "image-classifier@v1.0.0)" in refused.stderr + refused.stdout
    )
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]["train"]
    assert lock["params"]["params.yaml"]["train"]["model"]["weights"] == "image-classifier@v1.0.0"
