"""The augment stage: counts, labels, no val/test leak, determinism, switches, transforms, bad params."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_ROOT, repo_params, run, set_params

from mlpipeline.augmentation.elastic import add_elastic, elastic_step, upsample_linear
from mlpipeline.augmentation.transforms import Transforms, affine_coordinates, augment
from mlpipeline.core.bitexact import ONE
from mlpipeline.core.errors import PipelineError
from mlpipeline.core.params import ParamError, from_mapping
from mlpipeline.core.seeding import rng
from mlpipeline.core.shard_writer import DatasetWriter
from mlpipeline.core.shards import META_FILE, Dataset
from mlpipeline.stages.augment import AugmentParams, augment_dataset
from mlpipeline.stages.ingest import IngestParams, ingest

ALL_OFF = {
    "transforms.affine.probability": 0.0,
    "transforms.elastic.probability": 0.0,
    "transforms.noise_std": 0.0,
    "transforms.cutout.probability": 0.0,
    "transforms.drop_values": 0.0,
}
# Each transform alone, fully on; the second dict is the same transform at magnitude 0.
ONE_ON: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "affine": (
        {"transforms.affine.probability": 1.0},
        {
            "transforms.affine.probability": 1.0,
            "transforms.affine.rotation": 0.0,
            "transforms.affine.scale": [1.0, 1.0],
            "transforms.affine.shear": 0.0,
            "transforms.affine.translate": 0.0,
        },
    ),
    "elastic": (
        {"transforms.elastic.probability": 1.0},
        {"transforms.elastic.probability": 1.0, "transforms.elastic.alpha": 0.0},
    ),
    "noise": ({"transforms.noise_std": 10.0}, {"transforms.noise_std": 0.0}),
    "cutout": (
        {"transforms.cutout.probability": 1.0},
        {"transforms.cutout.probability": 1.0, "transforms.cutout.size": 0.0},
    ),
    "drop_values": ({"transforms.drop_values": 0.2}, {"transforms.drop_values": 0.0}),
    "crop": (
        {"transforms.crop.probability": 1.0},
        {"transforms.crop.probability": 1.0, "transforms.crop.scale": [1.0, 1.0]},
    ),
    "policy": (
        {"transforms.policy.kind": "randaugment"},
        {"transforms.policy.kind": "none"},
    ),
    "colour": (
        {"transforms.colour.probability": 1.0},
        {
            "transforms.colour.probability": 1.0,
            "transforms.colour.brightness": 0.0,
            "transforms.colour.contrast": 0.0,
            "transforms.colour.saturation": 0.0,
            "transforms.colour.hue": 0.0,
        },
    ),
    "flip": ({"transforms.flip.horizontal": 1.0}, {"transforms.flip.horizontal": 0.0}),
}


def section(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The repository's ``augment`` section with dotted keys overridden."""
    values = copy.deepcopy(repo_params()["augment"])
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = values
        for key in parents:
            node = node[key]
        node[leaf] = value
    return values


def augment_params(overrides: dict[str, Any] | None = None) -> AugmentParams:
    return from_mapping(AugmentParams, section(overrides), "augment")


def transforms(overrides: dict[str, Any]) -> Transforms:
    return augment_params({**ALL_OFF, **overrides}).transforms


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo digits ingested with the repository's params (real train/val/test splits)."""
    params = from_mapping(IngestParams, repo_params()["ingest"], "ingest")
    params = dataclasses.replace(params, source=str(REPO_ROOT / params.source))
    out = tmp_path_factory.mktemp("ingested") / "ingested"
    ingest(params, out)
    return out


def write_synthetic(out: Path, real: Path, count: int) -> Path:
    """A stand-in for the synthesize stage's output: shifted real training images."""
    dataset = Dataset(real)
    images, labels = dataset.load("train")
    with DatasetWriter(out, dataset.classes, dataset.image_shape) as writer:
        writer.add_split("train")
        writer.write("train", np.roll(images[:count], 1, axis=3), labels[:count])
    return out


@pytest.fixture(scope="module")
def synthetic(ingested: Path) -> Path:
    return write_synthetic(ingested.parent / "synthetic", ingested, 300)


@pytest.fixture(scope="module")
def no_synthetic(ingested: Path) -> Path:
    return write_synthetic(ingested.parent / "no-synthetic", ingested, 0)


def run_augment(
    ingested: Path, synthetic: Path, out: Path, overrides: dict[str, Any] | None = None, workers: int = 1
) -> Dataset:
    params = augment_params(overrides)
    augment_dataset(params, ingested, synthetic, out / "augmented", out / "samples.png", workers)
    return Dataset(out / "augmented")


def image_hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha256(image.tobytes()).hexdigest() for image in images}


def expected_labels(dataset: Dataset, per_shard: int) -> np.ndarray:
    """Labels in output order: per input shard, its labels ``per_shard`` times (the original, then
    each copy: a shard of its own)."""
    return np.concatenate([np.tile(labels, per_shard) for _, labels in dataset.iter_shards("train")])


def test_counts_labels_and_dtypes(ingested: Path, synthetic: Path, tmp_path: Path) -> None:
    out = run_augment(ingested, synthetic, tmp_path, {"copies": 2, "batch_size": 500})
    real_images, _ = Dataset(ingested).load("train")
    synth_images, _ = Dataset(synthetic).load("train")
    images, labels = out.load("real")

    assert out.splits == ["real", "synthetic"]  # one split per source
    assert images.dtype == np.uint8 and labels.dtype == np.int64
    assert images.shape == (3 * len(real_images), 1, 8, 8)
    assert out.load("synthetic")[0].shape == (3 * len(synth_images), 1, 8, 8)
    np.testing.assert_array_equal(labels, expected_labels(Dataset(ingested), 3))
    np.testing.assert_array_equal(out.load("synthetic")[1], expected_labels(Dataset(synthetic), 3))
    np.testing.assert_array_equal(images[: len(real_images)], real_images)  # the original shard first
    assert out.info.splits["real"].shards == [
        "real-train-00000.safetensors",
        "real-train-00000-copy1.safetensors",
        "real-train-00000-copy2.safetensors",
    ]
    assert out.classes == Dataset(ingested).classes
    real, synth = len(real_images), len(synth_images)
    assert out.info.attributes["sources"] == {
        "real": {"images": real, "originals": real, "augmented": 2 * real},
        "synthetic": {"images": synth, "originals": synth, "augmented": 2 * synth},
    }
    assert (tmp_path / "samples.png").read_bytes().startswith(b"\x89PNG")


def test_no_val_or_test_image_in_output(ingested: Path, synthetic: Path, tmp_path: Path) -> None:
    out = run_augment(ingested, synthetic, tmp_path, {"copies": 3})
    real = Dataset(ingested)
    held_out = image_hashes(real.load("val")[0]) | image_hashes(real.load("test")[0])
    for split in out.splits:
        assert held_out and not image_hashes(out.load(split)[0]) & held_out


def test_same_inputs_and_params_give_the_same_bytes_for_one_or_two_workers(
    ingested: Path, synthetic: Path, tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    run_augment(ingested, synthetic, first, {"batch_size": 300}, workers=1)  # 6 batches
    run_augment(ingested, synthetic, second, {"batch_size": 300}, workers=2)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    other_seed = run_augment(ingested, synthetic, tmp_path / "other", {"seed": 8, "batch_size": 300})
    assert not np.array_equal(other_seed.load("real")[0], Dataset(second / "augmented").load("real")[0])


def test_more_copies_keep_the_copies_already_made(ingested: Path, no_synthetic: Path, tmp_path: Path) -> None:
    overrides = {"keep_originals": False, "batch_size": 100_000}
    two = run_augment(ingested, no_synthetic, tmp_path / "two", {**overrides, "copies": 2}).load("real")[0]
    three = run_augment(ingested, no_synthetic, tmp_path / "three", {**overrides, "copies": 3}).load("real")[
        0
    ]
    np.testing.assert_array_equal(three[: len(two)], two)


def test_copies_zero_writes_the_originals_unchanged(ingested: Path, synthetic: Path, tmp_path: Path) -> None:
    out = run_augment(ingested, synthetic, tmp_path, {"copies": 0})
    for split, source in (("real", ingested), ("synthetic", synthetic)):
        for written, original in zip(out.load(split), Dataset(source).load("train"), strict=True):
            np.testing.assert_array_equal(written, original)


@pytest.mark.parametrize(
    ("include_real", "include_synthetic", "expected"),
    [(True, False, ["real"]), (False, True, ["synthetic"]), (True, True, ["real", "synthetic"])],
)
def test_include_switches_select_the_sources(
    ingested: Path, synthetic: Path, tmp_path: Path, include_real: bool, include_synthetic: bool, expected
) -> None:
    overrides = {"include_real": include_real, "include_synthetic": include_synthetic, "copies": 1}
    out = run_augment(ingested, synthetic, tmp_path, overrides)
    assert list(out.info.attributes["sources"]) == expected
    sizes = {"real": Dataset(ingested).count("train"), "synthetic": Dataset(synthetic).count("train")}
    assert {name: out.count(name) for name in sizes} == {
        name: 2 * size if name in expected else 0 for name, size in sizes.items()
    }


def test_keep_originals_false_writes_only_copies(ingested: Path, no_synthetic: Path, tmp_path: Path) -> None:
    out = run_augment(ingested, no_synthetic, tmp_path, {"keep_originals": False, "copies": 2})
    real_images, _ = Dataset(ingested).load("train")
    assert out.count("real") == 2 * len(real_images)
    assert out.info.attributes["sources"]["real"]["originals"] == 0


def test_empty_synthetic_set_is_fine_but_nothing_at_all_is_refused(
    ingested: Path, no_synthetic: Path, tmp_path: Path
) -> None:
    out = run_augment(ingested, no_synthetic, tmp_path / "ok", {"copies": 1})
    assert out.count("real") == 2 * Dataset(ingested).count("train") and out.count("synthetic") == 0
    assert out.info.attributes["sources"]["synthetic"] == {"images": 0, "originals": 0, "augmented": 0}
    with pytest.raises(PipelineError, match="selected sources have no train images: synthetic"):
        run_augment(ingested, no_synthetic, tmp_path / "empty", {"include_real": False})
    assert not (tmp_path / "empty").exists()


def test_synthetic_source_is_not_read_when_switched_off(ingested: Path, tmp_path: Path) -> None:
    out = run_augment(ingested, tmp_path / "missing", tmp_path, {"include_synthetic": False, "copies": 0})
    assert out.count("real") == Dataset(ingested).count("train")


def test_synthetic_set_that_does_not_match_the_real_one_is_refused(ingested: Path, tmp_path: Path) -> None:
    with DatasetWriter(tmp_path / "synthetic", ["a", "b"], (1, 8, 8)) as writer:
        writer.add_split("train")
    with pytest.raises(PipelineError, match=rf"synthetic/{META_FILE}: classes \['a', 'b'\] differ from"):
        run_augment(ingested, tmp_path / "synthetic", tmp_path / "out")
    with pytest.raises(PipelineError, match=rf"missing/{META_FILE}: not found"):
        run_augment(ingested, tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()


SHAPES = [(1, 8, 8), (3, 8, 8), (1, 28, 28), (3, 16, 24), (1, 64, 64)]


def sample_images(shape: tuple[int, int, int], n: int = 64) -> torch.Tensor:
    """Random images in 30..220, so a zeroed pixel or a clipped value shows."""
    return torch.from_numpy(rng(0, "sample-images").integers(30, 221, (n, *shape), dtype=np.uint8))


@pytest.mark.parametrize("shape", SHAPES)
def test_all_transforms_off_leave_images_unchanged(shape: tuple[int, int, int]) -> None:
    images = sample_images(shape)
    assert torch.equal(augment(images, transforms({}), 0, "batch"), images)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(ONE_ON))
def test_each_transform_changes_images_and_is_off_at_zero(shape: tuple[int, int, int], name: str) -> None:
    on, at_zero = ONE_ON[name]
    images = sample_images(shape)
    changed = augment(images, transforms(on), 0, "batch")
    assert changed.dtype == torch.uint8 and changed.shape == images.shape
    assert (changed != images).flatten(1).any(1).float().mean() > 0.9  # nearly every image changed
    assert torch.equal(augment(images, transforms(at_zero), 0, "batch"), images)


def test_augment_is_deterministic_and_depends_on_the_stream() -> None:
    images, spec = sample_images((1, 28, 28)), augment_params().transforms
    first = augment(images, spec, 3, "real", 0, 0, 1)
    assert torch.equal(first, augment(images, spec, 3, "real", 0, 0, 1))
    assert not torch.equal(first, augment(images, spec, 3, "real", 0, 0, 2))


def test_thread_count_does_not_change_the_output() -> None:
    images, spec = sample_images((1, 28, 28), 256), augment_params().transforms
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = augment(images, spec, 0, "b")
        torch.set_num_threads(2)
        assert torch.equal(augment(images, spec, 0, "b"), one)
    finally:
        torch.set_num_threads(threads)


def test_switching_one_transform_off_keeps_the_others_draws() -> None:
    images = sample_images((1, 8, 8))
    noisy = augment(images, transforms({"transforms.noise_std": 10.0}), 0, "b")
    dropped = augment(
        images, transforms({"transforms.noise_std": 10.0, "transforms.drop_values": 0.3}), 0, "b"
    )
    kept = dropped != 0
    assert torch.equal(dropped[kept], noisy[kept])


def test_cutout_and_dropped_values_together_erase_what_each_erases() -> None:
    """Both on: the cutout box survives the dropped pixels (one mask once overwrote the other)."""
    images = sample_images((1, 16, 16))
    cut = {"transforms.cutout.probability": 1.0, "transforms.cutout.size": 0.25}
    cutout = augment(images, transforms(cut), 0, "b") == 0
    dropped = augment(images, transforms({"transforms.drop_values": 0.1}), 0, "b") == 0
    both = augment(images, transforms({**cut, "transforms.drop_values": 0.1}), 0, "b") == 0
    assert cutout.any() and dropped.any()
    assert torch.equal(both, cutout | dropped)


def test_drop_values_zeroes_that_share_of_pixels_across_channels() -> None:
    dropped = augment(sample_images((3, 32, 32), 200), transforms({"transforms.drop_values": 0.3}), 0, "b")
    zero = dropped == 0
    assert torch.equal(zero.all(1), zero.any(1))  # a pixel is dropped in all channels at once
    assert zero.float().mean().item() == pytest.approx(0.3, abs=0.01)


def test_noise_std_is_in_pixel_units() -> None:
    images = torch.full((200, 1, 16, 16), 128, dtype=torch.uint8)
    noisy = augment(images, transforms({"transforms.noise_std": 10.0}), 0, "b")
    assert (noisy.float() - 128).std().item() == pytest.approx(10.0, rel=0.05)


def test_cutout_erases_one_rectangle_of_the_given_size() -> None:
    spec = transforms({"transforms.cutout.probability": 1.0, "transforms.cutout.size": 0.25})
    erased = augment(sample_images((1, 16, 32), 200), spec, 0, "b")[:, 0] == 0
    rows, cols = erased.any(2), erased.any(1)
    inside = (rows.sum(1) == 4) & (cols.sum(1) == 8)  # boxes cut by the border are smaller
    assert inside.float().mean() > 0.3
    assert torch.equal(erased[inside].sum((1, 2)), torch.full((int(inside.sum()),), 32))


@pytest.mark.parametrize(("size", "images"), [((20, 12), 500), ((160, 224), 200)])
def test_elastic_displacement_has_the_given_rms_on_every_pixel_grid(
    size: tuple[int, int], images: int
) -> None:
    """Small images draw the field at every pixel; large ones on a coarse grid (160 x 224 at
    sigma 0.15: a point every 4 and 8 px), interpolated: the RMS holds either way."""
    height, width = size
    spec = transforms({"transforms.elastic.probability": 1.0, "transforms.elastic.alpha": 0.05})
    identity = affine_coordinates(spec.affine, images, size, rng(0, "a"))
    x, y = (axis.copy() for axis in identity)
    add_elastic(x, y, spec.elastic, rng(0, "e"))
    shift = [(x - identity[0]) / (ONE * width), (y - identity[1]) / (ONE * height)]
    assert [axis.std() for axis in shift] == pytest.approx([0.05, 0.05], rel=0.05)


def test_the_demo_sizes_keep_a_field_drawn_at_every_pixel() -> None:
    """The grid is coarse only from 4 points a sigma up: the demo's 8x8 and 28x28 and 32x32
    images keep the bytes they had before it existed (``dvc.lock``, ``tests/test_cross_cpu.py``)."""
    assert [elastic_step(0.15 * side) for side in (8, 28, 32, 53, 54, 224, 512)] == [1, 1, 1, 1, 2, 8, 16]


def test_upsample_linear_is_bilinear_interpolation_rounded_once() -> None:
    grid = np.random.default_rng(0).integers(-(2**20), 2**20, (3, 7, 5))
    out = upsample_linear(grid, (4, 8), (25, 33))
    rows, cols = np.arange(25) / 4, np.arange(33) / 8
    top, left = np.minimum(rows.astype(int), 5), np.minimum(cols.astype(int), 3)
    down, across = (rows - top)[:, None], cols - left
    corners = [grid[:, top + dy][:, :, left + dx] for dy in (0, 1) for dx in (0, 1)]
    weights = [(1 - down) * (1 - across), (1 - down) * across, down * (1 - across), down * across]
    expected = np.floor(sum(c * w for c, w in zip(corners, weights, strict=True)) + 0.5)
    assert out.dtype == np.int64 and np.array_equal(out, expected.astype(np.int64))
    assert np.array_equal(upsample_linear(grid, (1, 1), (7, 5)), grid)


def test_affine_scale_enlarges_around_the_centre() -> None:
    spec = transforms(
        {
            "transforms.affine.probability": 1.0,
            "transforms.affine.rotation": 0.0,
            "transforms.affine.scale": [2.0, 2.0],
            "transforms.affine.shear": 0.0,
            "transforms.affine.translate": 0.0,
        }
    )
    square = torch.zeros((1, 1, 8, 8), dtype=torch.uint8)
    square[..., 3:5, 3:5] = 255
    zoomed = augment(square, spec, 0, "b")[0, 0]
    assert zoomed[2:6, 2:6].min() > 100 and zoomed[0].max() == 0  # twice as large, still centred


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"copies": -1}, "augment.copies must be >= 0"),
        ({"copies": 1.5}, "augment.copies must be an integer"),
        ({"batch_size": 0}, "augment.batch_size must be >= 1"),
        ({"seed": "x"}, "augment.seed must be an integer"),
        ({"include_real": "yes"}, "augment.include_real must be true or false"),
        ({"include_real": False, "include_synthetic": False}, "augment include_real and include_synthetic"),
        ({"copies": 0, "keep_originals": False}, "augment copies is 0 and keep_originals is false"),
        ({"transforms.padding": "wrap"}, "augment.transforms.padding must be one of"),
        ({"transforms.affine.probability": 1.5}, "augment.transforms.affine.probability must be"),
        ({"transforms.affine.scale": [1.2, 0.8]}, "augment.transforms.affine scale must be [low, high]"),
        ({"transforms.affine.scale": [1.0]}, "augment.transforms.affine.scale must have 2 item(s)"),
        ({"transforms.elastic.sigma": 0.0}, "augment.transforms.elastic.sigma must be > 0"),
        ({"transforms.noise_std": -1.0}, "augment.transforms.noise_std must be >= 0"),
        ({"transforms.cutout.size": 2.0}, "augment.transforms.cutout.size must be"),
        ({"transforms.drop_values": 1.1}, "augment.transforms.drop_values must be"),
        ({"transforms.blur": 1.0}, "augment.transforms.blur is not a known param"),
    ],
)
def test_bad_params_fail_with_one_line_naming_the_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ParamError) as error:
        augment_params(overrides)
    message = str(error.value)
    assert key in message and "\n" not in message


def test_stage_refuses_bad_params_with_one_line_and_no_output(tmp_path: Path) -> None:
    params = repo_params()
    params["augment"]["copies"] = -2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run(
        [sys.executable, "-m", "mlpipeline.stages.augment"],
        tmp_path,
        check=False,
        env={"PYTHONPATH": str(REPO_ROOT / "src")},
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "augment: error: params.yaml: augment.copies must be >= 0 and <= 1000, got -2"
    ]
    assert not (tmp_path / "data").exists() and not (tmp_path / "reports").exists()


def stand_in_synthetic(repo: Path) -> None:
    """Until the synthesize stage is in dvc.yaml, write an empty data/synthetic for augment to read."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    outs = [
        out if isinstance(out, str) else next(iter(out)) for s in stages.values() for out in s.get("outs", [])
    ]
    if "data/synthetic" in outs:
        return
    ingest = repo_params()["ingest"]
    classes = sorted(p.name for p in (repo / ingest["source"]).iterdir() if p.is_dir())
    with DatasetWriter(repo / "data/synthetic", classes, (ingest["channels"], *ingest["image_size"])) as w:
        w.add_split("train")


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def augmented_md5(repo: Path) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    (out,) = [o for o in lock["stages"]["augment"]["outs"] if o["path"] == "data/augmented"]
    return out["md5"]


@pytest.mark.slow
def test_dvc_reruns_only_augment_when_an_augment_param_changes(pipeline_repo: Path) -> None:
    stand_in_synthetic(pipeline_repo)
    assert "augment" in ran(run(["dvc", "repro", "augment"], pipeline_repo).stdout)
    first = augmented_md5(pipeline_repo)

    set_params(pipeline_repo, {"augment.copies": 1})
    assert ran(run(["dvc", "repro", "augment"], pipeline_repo).stdout) == {"augment"}
    assert Dataset(pipeline_repo / "data/augmented").info.attributes["copies"] == 1
    assert ran(run(["dvc", "repro", "augment"], pipeline_repo).stdout) == set()

    set_params(pipeline_repo, {"augment.copies": repo_params()["augment"]["copies"]})
    assert ran(run(["dvc", "repro", "-f", "-s", "augment"], pipeline_repo).stdout) == {"augment"}
    assert augmented_md5(pipeline_repo) == first
