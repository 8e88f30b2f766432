"""Hugging Face transformers archs in the pipeline: built by name from params, trained resident,
streamed, online and under DDP, written and rebuilt from model.json, started from a pretrained
checkpoint folder (a tiny one the test saves itself: nothing is downloaded), fine-tuned head
first; and the CNN's start-up never imports transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import REPO_ROOT, run
from test_train import weights_digest
from tiny_model import CLASSES, SHAPE, tiny_images
from tiny_training import killed_then_resumed, tiny_params, write_inputs, write_online_inputs, write_workdir

import mlpipeline.stages.train as train_stage
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.seeding import seed_everything
from mlpipeline.modeling.files import ModelError, load_model, save_model
from mlpipeline.modeling.network import ModelConfig, build_model, initial_model, new_config
from mlpipeline.stages.train import train
from mlpipeline.training.loop import Trainer

RESNET = {"depths": [1, 1], "hidden_sizes": [8, 16], "embedding_size": 8}
VIT = {
    "patch_size": 4,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
}
STATS = ([0.5], [0.25])


def hf_params(arch: str = "resnet", **overrides: Any):
    model = {"arch": arch, "hf": {"resnet": RESNET, "vit": VIT}, **overrides.pop("model", {})}
    return tiny_params(model=model, **overrides)


def config_for(arch: str, overrides: dict[str, Any], weights: Path | None = None, shape=SHAPE) -> ModelConfig:
    return new_config(arch, CLASSES, list(shape), STATS, None, [8], 0.0, {arch: overrides}, weights)


def save_checkpoint(folder: Path, classes: int = 5, channels: int = 1, **overrides: Any) -> Path:
    """A tiny randomly initialized resnet checkpoint in transformers' format, with a preprocessor."""
    from transformers import AutoConfig, AutoModelForImageClassification

    torch.manual_seed(1)
    config = AutoConfig.for_model(
        "resnet", num_labels=classes, num_channels=channels, **{**RESNET, **overrides}
    )
    AutoModelForImageClassification.from_config(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4], "image_std": [0.3]}))
    return folder


@pytest.mark.parametrize(("arch", "overrides"), [("resnet", RESNET), ("vit", VIT)])
def test_an_hf_arch_trains_resident_and_round_trips(tmp_path: Path, arch: str, overrides: dict) -> None:
    result = train(hf_params(arch, epochs=3), write_inputs(tmp_path), None, tmp_path / "ckpt")
    assert result.config.arch == arch and result.config.widths is None
    assert result.best.val_acc >= 0.6  # chance is 1/3; 3 epochs of 7 steps
    save_model(result.trainer.model, result.config, tmp_path / "models")
    written = json.loads((tmp_path / "models" / "model.json").read_text())
    assert written["network"]["model_type"] == arch and written["transformers"]
    loaded, _ = load_model(tmp_path / "models")
    images = torch.from_numpy(tiny_images(4, seed=3)[0])
    with torch.inference_mode():  # training holds weights channels-last: the sums round otherwise
        torch.testing.assert_close(loaded(images), result.trainer.model.cpu().eval()(images))


def test_streamed_and_online_paths_train_an_hf_arch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_stage, "chosen_placement", lambda nbytes, device: "streamed")
    streamed = train(hf_params(epochs=2), write_inputs(tmp_path / "s"), None, tmp_path / "ckpt-s")
    online = train(hf_params(epochs=2), write_online_inputs(tmp_path / "o"), None, tmp_path / "ckpt-o")
    assert streamed.best.val_acc >= 0.9 and online.best.val_acc >= 0.9


@pytest.mark.slow
def test_two_gloo_processes_train_an_hf_arch(tmp_path: Path) -> None:
    workdir = write_workdir(
        tmp_path, processes=2, epochs=2, model={"arch": "resnet", "hf": {"resnet": RESNET}}
    )
    run([sys.executable, "-m", "mlpipeline.stages.train"], workdir)
    _, config = load_model(workdir / "models")
    assert config.arch == "resnet"


def test_cnn_model_json_keeps_its_bytes() -> None:
    """A CNN's model.json has no arch fields: the demo's model files keep their bytes."""
    config = config_for("convnet", {})
    assert list(config.to_dict()) == [
        "classes",
        "image_shape",
        "widths",
        "dropout",
        "mean",
        "std",
        "preprocessing",
    ]


def test_unknown_arch_or_override_is_one_line_naming_the_closest() -> None:
    with pytest.raises(PipelineError, match=r"train\.model\.arch: 'resnt' .*closest: resnet"):
        config_for("resnt", {})
    with pytest.raises(
        PipelineError, match=r"train\.model\.hf\.resnet\.depth is no resnet config key \(closest: depths"
    ):
        config_for("resnet", {"depth": [1]})
    with pytest.raises(
        PipelineError,
        match=r"train\.model\.hf\.convnext: depths has 2 stages, num_stages is 4 \(set it to 2\)",
    ):
        config_for("convnext", {"depths": [1, 1], "hidden_sizes": [8, 16]})  # num_stages left at 4


def test_model_json_of_an_arch_transformers_does_not_know_is_refused(tmp_path: Path) -> None:
    """As a model trained with a newer transformers, of an arch this one lacks."""
    config = config_for("resnet", RESNET)
    network = {**config.network, "model_type": "resnet9000"}
    save_model(
        build_model(config),
        ModelConfig(**{**config.__dict__, "arch": "resnet9000", "network": network}),
        tmp_path,
    )
    with pytest.raises(PipelineError, match=r"arch 'resnet9000' is unknown to the installed transformers 5"):
        load_model(tmp_path)


def test_model_json_mixing_arch_fields_is_refused(tmp_path: Path) -> None:
    config = config_for("resnet", RESNET)
    save_model(build_model(config), config, tmp_path)
    text = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**text, "widths": [8], "dropout": 0.0}))
    with pytest.raises(ModelError, match=r"widths and dropout size the convnet, not arch resnet"):
        load_model(tmp_path)


def test_the_cnn_never_imports_transformers(tmp_path: Path) -> None:
    code = (
        "import sys; from mlpipeline.modeling.network import ModelConfig, build_model;"
        "build_model(ModelConfig(['a', 'b'], [1, 8, 8], widths=[4], dropout=0.0, mean=[0.5], std=[0.2]));"
        "import mlpipeline.stages.train, mlpipeline.stages.evaluate;"
        "assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pretrained_weights_load_all_but_the_head(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "tiny-resnet")
    config = config_for("convnet", {}, weights=folder)
    assert config.arch == "resnet" and (config.mean, config.std) == ([0.4], [0.3])  # the checkpoint's
    assert config.pretrained is not None and config.pretrained["source"] == folder.as_posix()
    model = initial_model(config, folder)
    saved = build_model(config_for("resnet", RESNET)).state_dict()  # shapes only
    from safetensors.torch import load_file

    checkpoint = load_file(folder / "model.safetensors")
    for name, tensor in model.state_dict().items():
        inner = name.removeprefix("net.")
        if inner.startswith("classifier."):
            assert tensor.shape[0] == len(CLASSES) or tensor.ndim == 0  # the new head
        elif inner in checkpoint:
            assert torch.equal(tensor, checkpoint[inner]), name
    assert saved.keys() == model.state_dict().keys()


def test_a_pretrained_tensor_that_does_not_fit_is_named(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "other", hidden_sizes=[8, 32])
    config = config_for("convnet", {}, weights=folder)
    bad = json.loads(json.dumps(config.network))
    bad["hidden_sizes"] = [8, 16]  # the network the data asks for differs from the checkpoint's
    mixed = ModelConfig(**{**config.__dict__, "network": bad})
    with pytest.raises(
        PipelineError, match=r"other: tensor resnet\.encoder\.\S+ is \[.*\] in the checkpoint"
    ):
        initial_model(mixed, folder)


def test_absent_weights_name_the_make_command(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"missing: no pretrained weights here .*make weights MODEL="):
        config_for("convnet", {}, weights=tmp_path / "missing")


def test_a_checkpoint_of_other_channels_is_refused(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "rgb", channels=3)
    with pytest.raises(
        PipelineError, match=r"takes 3-channel images, the data has 1 \(set ingest.channels: 3\)"
    ):
        config_for("convnet", {}, weights=folder)


def test_weights_folder_trains_through_the_stage_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path / "data" / "weights" / "tiny")
    monkeypatch.chdir(tmp_path)
    result = train(
        hf_params(epochs=2, model={"weights": "tiny"}), write_inputs(tmp_path), None, tmp_path / "ckpt"
    )
    assert result.config.pretrained["source"] == "data/weights/tiny" and result.best.val_acc >= 0.9


def test_frozen_epochs_move_the_head_alone_then_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = write_inputs(tmp_path)
    config = config_for("resnet", RESNET)
    seed_everything(tiny_params().seed)  # as train does before it builds the network
    start = {k: v.clone() for k, v in build_model(config).state_dict().items()}
    after_first: dict[str, torch.Tensor] = {}
    run_epoch = Trainer.run_epoch

    def recorded(self: Trainer, epoch: int, on_batch=None):
        record = run_epoch(self, epoch, on_batch)
        if epoch == 1:
            after_first.update({k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()})
        return record

    monkeypatch.setattr(Trainer, "run_epoch", recorded)
    thawed = train(hf_params(epochs=2, model={"freeze_epochs": 1}), inputs, None, tmp_path / "b")
    trainable = dict(thawed.trainer.model.named_parameters())
    moved = {name for name in trainable if not torch.equal(after_first[name], start[name])}
    assert moved == {name for name in trainable if name.startswith("net.classifier.")}
    changed = dict(thawed.trainer.model.named_parameters())
    assert not torch.equal(
        changed["net.resnet.embedder.embedder.convolution.weight"].cpu(),
        start["net.resnet.embedder.embedder.convolution.weight"],
    )


def test_fine_tuning_resumes_bitwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = hf_params(epochs=3, model={"freeze_epochs": 1, "backbone_lr_scale": 0.1})
    inputs = write_inputs(tmp_path)
    whole = train(params, inputs, None, tmp_path / "ckpt-whole")
    resumed = killed_then_resumed(
        monkeypatch, params, inputs, None, tmp_path / "ckpt", lambda trainer, epoch: epoch == 2
    )
    assert resumed.trainer.resumed_after == 1
    assert weights_digest(resumed.trainer.model) == weights_digest(whole.trainer.model)


def test_the_backbone_learns_at_its_scaled_rate(tmp_path: Path) -> None:
    result = train(
        hf_params(epochs=1, model={"backbone_lr_scale": 0.1}), write_inputs(tmp_path), None, tmp_path / "c"
    )
    peaks = {group["backbone"]: group["lr_scale"] for group in result.trainer.optimizer.param_groups}
    assert peaks == {False: 1.0, True: 0.1}


def test_params_yaml_switches_arch_in_one_key() -> None:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["train"]["model"]
    assert params["arch"] == "convnet" and set(params["hf"]) >= {"resnet", "vit"}


def test_other_pretrained_weights_never_resume_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = save_checkpoint(tmp_path / "data" / "weights" / "tiny")
    monkeypatch.chdir(tmp_path)
    params, inputs = hf_params(epochs=2, model={"weights": "tiny"}), write_inputs(tmp_path)
    train(params, inputs, None, tmp_path / "ckpt")  # leaves its last checkpoint (the stage removes it)
    assert train(params, inputs, None, tmp_path / "ckpt").trainer.resumed_after == 2
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4], "image_std": [0.31]}))
    assert train(params, inputs, None, tmp_path / "ckpt").trainer.resumed_after == 0


def test_make_weights_fetches_into_a_folder_and_refuses_pickles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    from mlpipeline.devtools.fetch_weights import fetch

    def fake_download(repo_id: str, local_dir: Path, allow_patterns: list[str]) -> None:
        if repo_id == "org/pickled":
            Path(local_dir).mkdir(parents=True)
            (Path(local_dir) / "config.json").write_text("{}")  # and a pytorch_model.bin, not fetched
        else:
            save_checkpoint(Path(local_dir))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    folder = fetch("org/tiny-resnet", "tiny-resnet", tmp_path)
    assert folder == tmp_path / "tiny-resnet" and (folder / "model.safetensors").is_file()
    assert config_for("convnet", {}, weights=folder).arch == "resnet"
    with pytest.raises(PipelineError, match=r"tiny-resnet: already fetched"):
        fetch("org/tiny-resnet", "tiny-resnet", tmp_path)
    with pytest.raises(PipelineError, match=r"org/pickled: no config.json and safetensors weights"):
        fetch("org/pickled", "pickled", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-resnet"]


@pytest.mark.slow
def test_dvc_repro_trains_exports_and_evaluates_an_hf_arch_on_rgb_photos(pipeline_repo: Path) -> None:
    """A user's photo folder (32x32 RGB here) and `-S train.model.arch=resnet`: the whole pipeline."""
    from conftest import set_params
    from dvcflow import TINY_PARAMS, dvc, flatten, stages_ran
    from imagedata import noise, write_png

    for index in range(60):
        write_png(
            pipeline_repo / "data" / "photos" / f"class{index % 3}" / f"{index}.png",
            noise(index, (32, 32), True),
        )
    set_params(pipeline_repo, flatten(yaml.safe_load(TINY_PARAMS.read_text())))
    set_params(
        pipeline_repo,
        {
            "ingest.source": "data/photos",
            "ingest.channels": 3,
            "ingest.image_size": [32, 32],
            "synthesize.count": 0,
        },
    )
    done = dvc(pipeline_repo, "exp", "run", "-S", "train.model.arch=resnet")
    assert {"ingest", "train", "export", "evaluate"} <= set(stages_ran(done.stdout)), done.stdout
    model = json.loads((pipeline_repo / "models" / "model.json").read_text())
    assert model["arch"] == "resnet" and model["network"]["num_channels"] == 3
    parity = json.loads((pipeline_repo / "reports" / "export" / "parity.json").read_text())
    assert parity["different_classes"] == 0 and parity["images"] > 0
    again = dvc(pipeline_repo, "exp", "run", "-S", "train.model.arch=resnet")
    assert stages_ran(again.stdout) == [], again.stdout
