"""The data flywheel: a dataset that grows, is relabelled and loses images keeps every image in its
split, and each version reuses the previous version's files for everything that did not change.

On generated data with many shards: 3,000 8x8 images in 10 class folders (a to j), 40 images a shard (the
writer's max bytes made small), so a version has about 75 shards and a 1% change touches a few.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from imagedata import Output, ingest_params, noise, run_ingest, write_png
from test_augment import augment_params
from test_synthesize import synth_params

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.shards import Dataset
from mlpipeline.ingestion.history import FolderVersion
from mlpipeline.ingestion.splitting import SPLITS
from mlpipeline.stages.augment import augment_dataset
from mlpipeline.stages.ingest import describe_growth
from mlpipeline.stages.synthesize import synthesize

COUNT = 3000
LABELS = "abcdefghij"  # one character each: the glyph generator draws them
SHARD_IMAGES = 40
MAX_SHARD_BYTES = 64 * SHARD_IMAGES  # 8x8 gray images
REUSED = 0.9  # the share of a new version's bytes that must be files of the previous one


@pytest.fixture(autouse=True)
def one_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPIPELINE_WORKERS", "1")


def name(index: int, suffix: str = "") -> str:
    return f"{label_of(index)}/{index:05d}{suffix}.png"


def label_of(index: int) -> str:
    return LABELS[index % len(LABELS)]


def next_label(path: str) -> str:
    """The class after ``path``'s (its folder), a relabel."""
    return LABELS[(LABELS.index(path.split("/")[0]) + 1) % len(LABELS)]


@pytest.fixture(scope="module")
def first_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flywheel") / "raw"
    for index in range(COUNT):
        write_png(root / name(index), noise(index))
    return root


@pytest.fixture
def raw(first_raw: Path, tmp_path: Path) -> Path:
    """The first version's source, to change: its files hard-linked (changes replace files)."""
    root = tmp_path / "raw"
    shutil.copytree(first_raw, root, copy_function=os.link)
    return root


@pytest.fixture(scope="module")
def first(first_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Output:
    """The first version, built from scratch."""
    return version(first_raw, tmp_path_factory.mktemp("first") / "ingested")


def version(raw: Path, out: Path, base: Path | None = None, **overrides) -> Output:
    params = ingest_params(raw, **overrides)
    files = FolderVersion(base) if base is not None else None
    return run_ingest(params, out, base=files, max_shard_bytes=MAX_SHARD_BYTES)


def digests(root: Path) -> dict[str, str]:
    return {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in sorted(root.iterdir())}


def reused_share(new: Path, old: Path) -> float:
    """The share of ``new``'s bytes in files whose bytes are a file of ``old``: what DVC, which
    stores each distinct file once, neither stores nor moves again."""
    known = set(digests(old).values())
    sizes = {path.name: path.stat().st_size for path in new.iterdir()}
    return sum(sizes[n] for n, md5 in digests(new).items() if md5 in known) / sum(sizes.values())


def splits_by_image(output: Output) -> pd.Series:
    """Each stored image's split (held-out ones: train), by its pixels' sha256."""
    table = output.manifest[output.manifest["index"].ge(0) | output.manifest["split"].eq("held_out")]
    return table.set_index("pixel_sha256")["split"].replace("held_out", "train")


def moved(before: Output, after: Output) -> int:
    old, new = splits_by_image(before), splits_by_image(after)
    common = old.index.intersection(new.index)
    return int((old[common] != new[common]).sum())


def contents(output: Output) -> set[tuple[str, str, str]]:
    """(pixels, class, split) of every live image: what a reader of the version sees."""
    live = output.manifest[output.manifest["index"] >= 0]
    return set(zip(live["pixel_sha256"], live["class"], live["split"], strict=True))


def test_the_first_version_has_many_shards(first: Output) -> None:
    shards = sum(len(Dataset(first.root).info.splits[s].shards) for s in SPLITS)
    assert shards > 70
    assert first.summary.growth.decoded == COUNT


def test_growth_among_the_old_names_moves_nothing_and_reuses_the_shards(
    first: Output, raw: Path, tmp_path: Path
) -> None:
    for index in range(COUNT, COUNT + COUNT // 100):  # names that sort among the old ones
        write_png(raw / name(index - COUNT, "a"), noise(index))
    grown = version(raw, tmp_path / "grown", first.root)
    assert moved(first, grown) == 0
    assert reused_share(grown.root, first.root) >= REUSED
    assert grown.summary.growth.decoded == COUNT // 100  # only the new images
    assert contents(grown) == contents(version(raw, tmp_path / "scratch"))  # what a fresh build holds

    again = version(raw, tmp_path / "again", first.root)  # a forced rerun: the same bytes
    assert digests(again.root) == digests(grown.root)
    advanced = version(raw, tmp_path / "advanced", grown.root)  # the base advanced, no source change
    assert digests(advanced.root) == digests(grown.root)
    assert advanced.summary.growth.decoded == 0 and advanced.summary.growth.new == 0


def test_a_relabel_moves_nothing_and_reuses_the_shards(first: Output, raw: Path, tmp_path: Path) -> None:
    relabelled = [name(index) for index in range(0, COUNT, 100)]  # 1%, moved to the next class
    for old in relabelled:
        (raw / old).rename(raw / next_label(old) / Path(old).name)
    after = version(raw, tmp_path / "after", first.root)
    assert moved(first, after) == 0  # relabelled ones included: the split follows the pixels
    assert reused_share(after.root, first.root) >= REUSED
    table = after.manifest.set_index("source")
    for old in relabelled:
        assert table.loc[f"{next_label(old)}/{Path(old).name}", "class"] == next_label(old)
    assert contents(after) == contents(version(raw, tmp_path / "scratch"))


def test_a_relabel_in_a_manifest_moves_nothing_and_decodes_nothing(raw: Path, tmp_path: Path) -> None:
    rows = [(name(index), label_of(index)) for index in range(COUNT)]
    write_labels(raw / "labels-1.csv", rows)
    before = version(raw, tmp_path / "before", manifest="labels-1.csv")
    rows[::100] = [(path, next_label(path)) for path, _ in rows[::100]]
    write_labels(raw / "labels-2.csv", rows)
    after = version(raw, tmp_path / "after", before.root, manifest="labels-2.csv")
    assert moved(before, after) == 0
    assert reused_share(after.root, before.root) >= REUSED
    assert after.summary.growth.decoded == 0  # same files: the new rows' pixels come from the old shards
    assert contents(after) == contents(version(raw, tmp_path / "scratch", manifest="labels-2.csv"))


def write_labels(manifest: Path, rows: list[tuple[str, ...]], header: str = "path,label") -> None:
    manifest.write_text("\n".join([header, *(",".join(row) for row in rows)]) + "\n")


def test_a_removal_moves_nothing_and_writes_no_shard(first: Output, raw: Path, tmp_path: Path) -> None:
    removed = [name(index) for index in range(50, COUNT, 100)]
    for path in removed:
        (raw / path).unlink()
    after = version(raw, tmp_path / "after", first.root)
    assert moved(first, after) == 0
    assert after.summary.growth.new == 0 and after.summary.growth.decoded == 0
    assert reused_share(after.root, first.root) >= REUSED
    assert not set(removed) & set(after.manifest["source"])
    assert contents(after) == contents(version(raw, tmp_path / "scratch"))


def test_a_shard_mostly_dead_is_compacted(first: Output, raw: Path, tmp_path: Path) -> None:
    dataset = Dataset(first.root)
    shard = dataset.info.splits["train"].shards[3]
    records = pd.read_csv(first.root / shard.replace(".safetensors", ".csv"))
    for path in records["source"][: SHARD_IMAGES // 2]:  # half of it: past compact_dead_share 0.25
        (raw / path).unlink()
    after = version(raw, tmp_path / "after", first.root)
    assert shard not in Dataset(after.root).info.splits["train"].shards
    assert after.summary.growth.compacted == 1 and after.summary.growth.decoded == 0
    assert moved(first, after) == 0
    assert reused_share(after.root, first.root) >= REUSED
    assert contents(after) == contents(version(raw, tmp_path / "scratch"))
    assert "compacted 1" in describe_growth(after.summary.growth)


def test_a_changed_file_is_decoded_again_and_its_old_row_dies(
    first: Output, raw: Path, tmp_path: Path
) -> None:
    (raw / name(7)).unlink()
    write_png(raw / name(7), noise(10**6))
    after = version(raw, tmp_path / "after", first.root)
    assert after.summary.growth.decoded == 1
    table = after.manifest.set_index("source")
    assert table.loc[name(7), "pixel_sha256"] == hashlib.sha256(noise(10**6).tobytes()).hexdigest()
    assert contents(after) == contents(version(raw, tmp_path / "scratch"))


def test_a_new_class_keeps_the_old_shards(first: Output, raw: Path, tmp_path: Path) -> None:
    """ "A" sorts before the old classes: their labels' numbers change, and their shards stay."""
    for index in range(40):
        write_png(raw / "A" / f"{index:03d}.png", noise(2 * 10**6 + index))
    after = version(raw, tmp_path / "after", first.root)
    assert after.classes[0] == "A"
    assert reused_share(after.root, first.root) >= REUSED
    scratch = version(raw, tmp_path / "scratch")
    assert contents(after) == contents(scratch)
    for split in SPLITS:  # a reader sees each image with its class, in the new numbering
        images, labels = Dataset(after.root).load(split)
        expected = dict(zip(*[scratch.manifest[c] for c in ("pixel_sha256", "label")], strict=True))
        found = [expected[hashlib.sha256(image.tobytes()).hexdigest()] for image in images]
        assert labels.tolist() == found


def test_keep_train_fraction_changes_no_shard(first: Output, first_raw: Path, tmp_path: Path) -> None:
    half = version(first_raw, tmp_path / "half", first.root, keep_train_fraction=0.5)
    assert half.summary.growth.new == 0 and half.summary.growth.decoded == 0
    assert (half.manifest["split"] == "held_out").sum() == half.summary.counts["held_out"] > 0
    assert moved(first, half) == 0
    assert reused_share(half.root, first.root) >= REUSED


def test_other_preprocessing_reuses_nothing(first: Output, first_raw: Path, tmp_path: Path) -> None:
    other = version(first_raw, tmp_path / "other", first.root, image_size=[4, 4])
    assert other.summary.growth.decoded == COUNT
    assert "was made with other preprocessing" in describe_growth(other.summary.growth)


def test_a_base_without_a_shard_it_keeps_is_refused(first: Output, raw: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(first.root, broken)
    shard = Dataset(broken).info.splits["val"].shards[0]
    (broken / shard).unlink()
    with pytest.raises(PipelineError) as caught:
        version(raw, tmp_path / "after", broken)
    assert str(caught.value) == f"{broken / shard}: missing from the base version"
    assert not (tmp_path / "after").exists()


def test_split_and_group_columns_are_honoured(raw: Path, tmp_path: Path) -> None:
    rows = [(name(i), label_of(i), "", "") for i in range(COUNT)]
    rows[:50] = [(path, label, "test", "") for path, label, _, _ in rows[:50]]  # an official test set
    rows[100:200] = [
        (path, label, "", f"patient-{i % 7}") for i, (path, label, _, _) in enumerate(rows[100:200])
    ]
    rows[300:310] = [
        (path, label, "val" if i < 2 else "", "patient-x")
        for i, (path, label, _, _) in enumerate(rows[300:310])
    ]
    write_labels(raw / "labels.csv", rows, header="path,label,split,group")
    table = version(raw, tmp_path / "out", manifest="labels.csv").manifest.set_index("source")
    assert set(table.loc[[row[0] for row in rows[:50]], "split"]) == {"test"}
    groups = pd.Series({row[0]: row[3] for row in rows[100:200]})
    assert (table.loc[groups.index, "split"].groupby(groups).nunique() == 1).all()
    assert table.loc[groups.index, "split"].nunique() > 1  # groups land apart, each whole
    assert set(table.loc[[row[0] for row in rows[300:310]], "split"]) == {"val"}  # a pin pins its group


def test_a_group_pinned_to_two_splits_is_refused(raw: Path, tmp_path: Path) -> None:
    rows = [(name(i), label_of(i), "", "") for i in range(COUNT)]
    rows[3] = (rows[3][0], rows[3][1], "val", "g")
    rows[9] = (rows[9][0], rows[9][1], "test", "g")
    write_labels(raw / "labels.csv", rows, header="path,label,split,group")
    with pytest.raises(PipelineError) as caught:
        version(raw, tmp_path / "out", manifest="labels.csv")
    assert (
        str(caught.value)
        == f"{raw}/labels.csv: line 11 pins group 'g' to test, line 5 to val; a group shares one split"
    )


def test_offline_augmentation_reuses_what_did_not_change(first: Output, raw: Path, tmp_path: Path) -> None:
    """Its shards mirror the input's: unchanged input shards give the same augmented bytes."""
    for index in range(COUNT, COUNT + COUNT // 100):
        write_png(raw / name(index - COUNT, "a"), noise(index))
    grown = version(raw, tmp_path / "grown", first.root)
    relabelled = tmp_path / "raw-relabelled"
    shutil.copytree(raw, relabelled, copy_function=os.link)
    for index in range(0, COUNT, 100):
        (relabelled / name(index)).rename(relabelled / next_label(name(index)) / Path(name(index)).name)
    relabel = version(relabelled, tmp_path / "relabel", grown.root)
    params = augment_params({"include_synthetic": False, "copies": 2})
    augmented = {}
    for output in (first, grown, relabel):
        target = tmp_path / f"augmented-{output.root.name}"
        augment_dataset(params, output.root, tmp_path / "none", target, tmp_path / "samples.png", workers=1)
        augmented[output.root.name] = target
    assert reused_share(augmented["grown"], augmented[first.root.name]) >= REUSED
    assert reused_share(augmented["relabel"], augmented["grown"]) >= REUSED


def test_synthesize_is_unaffected_by_growth_unless_it_reads_it(
    first: Output, raw: Path, tmp_path: Path
) -> None:
    """Its images take the real split's value map (integer levels, which a 1% growth leaves) and,
    with class_balance: match_real, its class counts: uniform, the same bytes."""
    for index in range(COUNT, COUNT + COUNT // 100):
        write_png(raw / name(index - COUNT, "a"), noise(index))
    grown = version(raw, tmp_path / "grown", first.root)
    outputs = {}
    for output in (first, grown):
        real = tmp_path / "ingested"  # one path, as in the pipeline: its output records where it came from
        shutil.rmtree(real, ignore_errors=True)
        shutil.copytree(output.root, real)
        outputs[output.root.name] = tmp_path / f"synthetic-{output.root.name}"
        synthesize(
            synth_params({"count": 200}), real, outputs[output.root.name], tmp_path / "reports", workers=1
        )
    assert digests(outputs["grown"]) == digests(outputs[first.root.name])
