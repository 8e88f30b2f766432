"""What train refuses before any training work, in one line: transformers archs it cannot train
(each mapped model type built and run on a tiny input, or refused), config overrides that
transformers would build another network from, models past the size bound, and a fine-tuning
plan whose backbone never learns. The classifier head is found by what each model says it is."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import repo_params
from safetensors.torch import load_file
from test_models_hf import RESNET, STATS, VIT
from tiny_model import CLASSES, SHAPE
from tiny_training import tiny_params, write_inputs

from mlpipeline.core.errors import PipelineError
from mlpipeline.modeling import hf, hf_build, hf_overrides, hf_size
from mlpipeline.modeling.network import fitted_network, initial_model, new_config
from mlpipeline.stages.train import train
from mlpipeline.training.optim import make_optimizer


def refusal(call, *args, **kwargs) -> str:
    with pytest.raises(PipelineError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"epochs": 2, "model": {"freeze_epochs": 2}},
            r"freeze_epochs is 2, but the train phase runs 2 epochs",
        ),
        (
            {"epochs": 1, "min_steps": 21, "model": {"freeze_epochs": 3}},  # 7 steps an epoch: 3 epochs
            r"freeze_epochs is 3, but the train phase runs 3 epochs "
            r"\(train\.min_steps 21 at 7 steps an epoch\)",
        ),
        (
            {
                "epochs": 3,
                "model": {"freeze_epochs": 1},
                "synthetic": {"use": "pretrain", "pretrain_epochs": 1},
            },
            r"freeze_epochs is 1, but the pretrain phase runs 1 epoch: .*train\.synthetic\.pretrain_epochs",
        ),
    ],
)
def test_freeze_epochs_covering_a_phase_are_refused_before_training(
    tmp_path: Path, overrides: dict, expected: str
) -> None:
    """The backbone would never learn: refused, not warned (a run that trains a head alone is not
    what freeze_epochs says, and a warning scrolls by in a queued experiment's log)."""
    pretrain = overrides.get("synthetic", {}).get("use") == "pretrain"  # without synthetic images, none
    inputs = write_inputs(tmp_path, synthetic_per_class=4 if pretrain else 0)
    message = refusal(train, tiny_params(**overrides), inputs, None, tmp_path / "ckpt")
    assert message.startswith("params.yaml: train.model.freeze_epochs is")
    assert "the backbone would never learn" in message
    assert re.search(expected, message), message
    assert not (tmp_path / "ckpt").exists()


def test_freeze_epochs_below_the_epochs_min_steps_runs_are_accepted(tmp_path: Path) -> None:
    params = tiny_params(epochs=1, min_steps=14, model={"freeze_epochs": 1})  # 2 epochs of 7 steps
    assert train(params, write_inputs(tmp_path), None, tmp_path / "ckpt").trainer.epochs == 2


SHIPPED_VIT = repo_params()["train"]["model"]["hf"]["vit"]  # params.yaml's: hidden size 64
CLIP = {
    "vision_config": {
        "patch_size": 4,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
    }
}


def network(
    arch: str, overrides: dict[str, Any], shape: tuple[int, int, int] = SHAPE, hf: dict | None = None
):
    """The checked, fitted network config of ``arch`` for the tiny data (``hf``: all of train.model.hf)."""
    return fitted_network(arch, CLASSES, list(shape), hf if hf is not None else {arch: overrides}, None)[0]


@pytest.mark.parametrize(
    ("arch", "overrides", "expected"),
    [
        (
            "resnet",
            {**RESNET, "depths": "abc"},
            r"hf\.resnet\.depths must be list\[int\] \| tuple\[int, \.\.\.\] \| None, got 'abc'",
        ),
        (
            "resnet",
            {**RESNET, "layer_type": "foo"},
            r"hf\.resnet: layer_type=foo is not one of basic,bottleneck",
        ),
        (
            "resnet",
            {**RESNET, "model_type": "vit"},
            r"hf\.resnet\.model_type is not for params\.yaml: it is the arch: set train\.model\.arch",
        ),
        (
            "resnet",
            {**RESNET, "out_features": ["stage9"]},
            r"hf\.resnet: resnet refuses this config \(out_features must be a subset of stage_names",
        ),
        ("vit", {**VIT, "patch_size": 0}, r"hf\.vit\.patch_size must be >= 1, got 0"),
        ("vit", {**VIT, "layer_norm_eps": 0}, r"hf\.vit\.layer_norm_eps must be > 0 .*got 0\.0"),
        ("resnet", {**RESNET, "embedding_size": 0}, r"hf\.resnet\.embedding_size must be >= 1, got 0"),
        (
            "resnet",
            {**RESNET, "dtype": "float16"},
            r"hf\.resnet\.dtype is not for params\.yaml: the pipeline sets it",
        ),
        ("resnet", {**RESNET, "torch_dtype": "float16"}, r"hf\.resnet\.torch_dtype is not for params\.yaml"),
        ("resnet", {**RESNET, "depths": [-1, 1]}, r"hf\.resnet\.depths\[0\] must be >= 1, got -1"),
        (
            "resnet",
            {**RESNET, "hidden_sizes": [32]},
            r"hf\.resnet: depths has 2 stages, hidden_sizes 1 values",
        ),
        (
            "resnet",
            {"depths": [1, 1]},
            r"hf\.resnet: depths has 2 stages, hidden_sizes 4 values .*set hidden_sizes too",
        ),
        ("vit", {**VIT, "num_hidden_layers": -3}, r"hf\.vit\.num_hidden_layers must be >= 1, got -3"),
        (
            "vit",
            {**SHIPPED_VIT, "num_attention_heads": 3},
            r"hf\.vit: hidden_size 64 is not a multiple of num_attention_heads 3",
        ),
        (
            "vit",
            {**VIT, "num_channels": 3},
            r"hf\.vit\.num_channels is not for params\.yaml: ingest\.channels sets it",
        ),
        (
            "vit",
            {**VIT, "image_size": 32},
            r"hf\.vit\.image_size is not for params\.yaml: ingest\.image_size sets it",
        ),
        (
            "clip",
            {"vision_config": {"hidden_sze": 8}},
            r"hf\.clip\.vision_config\.hidden_sze is no clip_vision_model config key \(closest: hidden_size",
        ),
        ("clip", {"vision_config": 5}, r"hf\.clip\.vision_config must be a mapping of config keys, got 5"),
    ],
)
def test_override_values_are_refused_in_one_line_naming_the_key(
    arch: str, overrides: dict, expected: str
) -> None:
    """Each of these was a traceback, or trained another network than the one asked for."""
    message = refusal(network, arch, overrides)
    assert message.startswith(f"params.yaml: train.model.hf.{arch}")
    assert re.search(expected, message), message


def test_a_misspelled_model_type_under_hf_names_the_closest() -> None:
    """train.model.hf.resnte would leave resnet at transformers' ImageNet-sized defaults."""
    message = refusal(network, "resnet", {}, hf={"resnte": RESNET})
    assert message.startswith("params.yaml: train.model.hf.resnte is not an image-classification model type")
    assert "(closest: resnet" in message


def test_an_hf_entry_that_is_no_mapping_is_one_line() -> None:
    assert refusal(tiny_params, model={"hf": {"resnet": 5}}) == (
        "params.yaml: train.model.hf.resnet must be a mapping, got 5"  # was KeyError: 'properties'
    )


def test_what_transformers_builds_as_asked_is_accepted() -> None:
    torch.manual_seed(5)
    drawn = torch.rand(3)
    torch.manual_seed(5)
    network("vit", {**VIT, "hidden_dropout_prob": 0.5})  # built, run in training mode: random draws
    assert torch.equal(torch.rand(3), drawn)  # the check leaves the seeded stream to training
    assert network("vit", {**VIT, "layer_norm_eps": 1})["layer_norm_eps"] == 1.0  # YAML's 1 for 1.0
    registers = {**VIT, "mlp_ratio": 2, "num_register_tokens": 0}  # 0 means none here
    del registers["intermediate_size"]
    assert network("dinov2_with_registers", registers)["num_register_tokens"] == 0
    clip = network("clip", CLIP, shape=(1, 8, 8))
    assert clip["vision_config"]["num_channels"] == 1 and clip["vision_config"]["image_size"] == 8
    assert network("deit", VIT)["architectures"] == ["DeiTForImageClassification"]  # transformers needs one


def test_a_model_past_the_size_bound_is_refused_before_memory_is_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = refusal(network, "vit", {**SHIPPED_VIT, "num_hidden_layers": 200_000})
    # "at least": the quick lower bound refused it, from small models: making it would take minutes
    bound = "more than MLPIPELINE_MAX_PARAMETERS=1,000,000,000"
    assert re.search(rf"vit would hold at least 6,694,\d{{3}},\d{{3}} parameters, {bound}", message), message
    deep = hf_build.config_of(network("vit", {**VIT, "num_hidden_layers": 100}))
    exact = hf_size.check_size(deep, hf_size.max_parameters(), "here")
    monkeypatch.setenv("MLPIPELINE_MAX_PARAMETERS", str(exact))  # its quick lower bound stays below
    network("vit", {**VIT, "num_hidden_layers": 100})
    monkeypatch.setenv("MLPIPELINE_MAX_PARAMETERS", str(exact - 1))
    message = refusal(network, "vit", {**VIT, "num_hidden_layers": 100})
    assert message.endswith("allows (smaller overrides, or raise it if this machine can train that)")
    monkeypatch.setenv("MLPIPELINE_MAX_PARAMETERS", "lots")
    assert refusal(network, "vit", VIT) == (
        "MLPIPELINE_MAX_PARAMETERS='lots': must be a whole number >= 1 (unset: 1,000,000,000)"
    )


@pytest.mark.parametrize(
    ("arch", "overrides", "shape", "expected"),
    [
        (
            "convnext",
            {},
            SHAPE,
            r"convnext does not run on 1x8x8 images with this config \(Calculated padded input size .* "
            r"Kernel size can't be greater than actual input size\); try a larger ingest\.image_size",
        ),
        ("timm_wrapper", {}, SHAPE, r"timm_wrapper needs the timm package, which is not installed here"),
        ("dinat", {}, SHAPE, r"dinat needs the natten package"),
        ("imagegpt", {}, SHAPE, r"imagegpt classifies input_ids .*not pixels"),
        ("siglip2", {}, SHAPE, r"siglip2 needs pixel_attention_mask, spatial_shapes beside the pixels"),
        ("shieldgemma2", {}, SHAPE, r"shieldgemma2 needs input_ids beside the pixels"),
        (
            "textnet",
            {},
            (1, 32, 32),
            r"textnet takes 3-channel images whatever num_channels says, the data has 1 "
            r"\(set ingest\.channels: 3\)$",
        ),
        (
            "pp_lcnet",
            {},
            (3, 32, 32),
            r"pp_lcnet's model gives no logits \(its output is a BaseModelOutputWithNoAttention\)",
        ),
        ("hgnet_v2", {}, (1, 32, 32), r"hgnet_v2 takes 3-channel images whatever num_channels says"),
    ],
)
def test_an_arch_that_cannot_run_on_the_data_is_one_line(
    arch: str, overrides: dict, shape, expected: str
) -> None:
    assert re.search(expected, refusal(network, arch, overrides, shape)), arch


def head_of(arch: str) -> tuple[str, ...]:
    """The head ``hf_build`` finds in ``arch``'s model at transformers' defaults, checked to hold
    one row per class in every parameter."""
    config = hf_overrides.arch_config(arch, {})
    config.num_labels = len(CLASSES)
    config.architectures = [hf_build.model_class(config).__name__]
    head = hf_build.head_modules(config)
    for name, parameter in hf_size.made_on(config, "meta").named_parameters():
        if name.startswith(head):
            assert parameter.shape[0] == len(CLASSES), (arch, name)
    return head


@pytest.mark.parametrize(
    ("arch", "head"),
    [
        ("resnet", ("classifier.1.",)),
        ("vit", ("classifier.",)),
        ("hgnet_v2", ("fc.",)),  # its "classifier" pools and flattens, holding nothing
        ("textnet", ("fc.",)),
        ("swiftformer", ("dist_head.", "head.")),  # its logits average the two
        ("pp_lcnet", ("head.",)),
        ("imagegpt", ("score.",)),
        ("levit", ("classifier.linear.",)),
        ("perceiver", ("perceiver.decoder.decoder.final_layer.",)),
    ],
)
def test_the_head_is_the_layers_the_class_count_sizes(arch: str, head: tuple[str, ...]) -> None:
    """Found by what each model says, not by a name: 9 of the mapped models call it otherwise."""
    assert head_of(arch) == head


@pytest.mark.slow
def test_every_mapped_model_has_a_head_but_shieldgemma2() -> None:
    heads = {arch: head_of(arch) for arch in hf.supported() if arch not in ("dinat", "timm_wrapper")}
    assert [arch for arch, head in heads.items() if not head] == ["shieldgemma2"]  # yes/no: the LM's tokens


# What transformers' defaults run on the demo's 8x8 grayscale digits (docs/models.md lists them).
RUN_AT_8X8 = {
    "bit",
    "cvt",
    "focalnet",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilevit",
    "poolformer",
    "regnet",
    "resnet",
    "swiftformer",
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", hf.supported())
def test_every_mapped_arch_trains_here_or_is_refused_in_one_line(tmp_path: Path, arch: str) -> None:
    """Every model type transformers maps to an image classifier, at its defaults on 8x8
    grayscale images: refused in one line, or built and run, its head found for fine-tuning
    (freeze_epochs, backbone_lr_scale) and replaced in a pretrained checkpoint of it."""
    try:
        network(arch, {})
    except PipelineError as refused:
        assert arch not in RUN_AT_8X8, str(refused)
        assert "\n" not in str(refused) and str(refused).startswith(f"params.yaml: train.model.hf.{arch}")
        return
    assert arch in RUN_AT_8X8
    config = new_config(arch, CLASSES, list(SHAPE), STATS, None, [8], 0.0, {arch: {}}, None)
    other = hf_build.config_of(config.network)
    other.num_labels = len(CLASSES) + 2  # a checkpoint of another task: its head cannot load
    hf_size.made_on(other).save_pretrained(tmp_path / arch)
    pretrained = new_config("convnet", CLASSES, list(SHAPE), STATS, None, [8], 0.0, {}, tmp_path / arch)
    model = initial_model(pretrained, tmp_path / arch)
    saved = load_file(tmp_path / arch / "model.safetensors")
    head = {name for name, _ in model.named_parameters() if name.startswith(model.HEAD)}
    for name, tensor in model.state_dict().items():
        if name.startswith(model.HEAD):
            assert tensor.shape[0] == len(CLASSES), name  # new, sized for the data's classes
        elif name.removeprefix("net.") in saved:
            assert torch.equal(tensor, saved[name.removeprefix("net.")]), name

    params = tiny_params(model={"arch": arch, "freeze_epochs": 1, "backbone_lr_scale": 0.1})
    groups = make_optimizer(model, params).param_groups
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    learning_first = {names[id(p)] for group in groups if not group["backbone"] for p in group["params"]}
    assert learning_first == head and head
    assert {group["lr_scale"] for group in groups if group["backbone"]} == {0.1}
