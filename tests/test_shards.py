"""Dataset shards: round trip, size bound, determinism, clear errors, atomic appearance."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlpipeline.core.errors import PipelineError
from mlpipeline.core.shard_rows import SplitReader
from mlpipeline.core.shard_writer import DatasetWriter
from mlpipeline.core.shards import META_FILE, Dataset

CLASSES = ["a", "b", "c"]
SHAPE = (1, 4, 5)
PIXELS = int(np.prod(SHAPE))


def sample(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    return gen.integers(0, 256, (n, *SHAPE), dtype=np.uint8), gen.integers(0, len(CLASSES), n)


def write(out: Path, batches: dict[str, list[int]], max_shard_bytes: int = 10 * PIXELS) -> Path:
    """Write splits from ``batches`` (split -> batch sizes), the data drawn from one seeded stream."""
    images, labels = sample(sum(sum(sizes) for sizes in batches.values()))
    start = 0
    with DatasetWriter(out, CLASSES, SHAPE, {"origin": "test"}, max_shard_bytes=max_shard_bytes) as writer:
        for split, sizes in batches.items():
            writer.add_split(split)
            for size in sizes:
                writer.write(split, images[start : start + size], labels[start : start + size])
                start += size
        writer.add_file("notes.txt", b"hello\n")
    return out


def digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def test_round_trip(tmp_path: Path) -> None:
    images, labels = sample(33)
    dataset = Dataset(write(tmp_path / "ds", {"train": [20, 5], "val": [8]}))
    assert dataset.classes == CLASSES
    assert dataset.image_shape == SHAPE
    assert dataset.splits == ["train", "val"]
    assert dataset.info.attributes == {"origin": "test"}
    assert (dataset.count("train"), dataset.count("val")) == (25, 8)
    train_images, train_labels = dataset.load("train")
    np.testing.assert_array_equal(train_images, images[:25])
    np.testing.assert_array_equal(train_labels, labels[:25])
    assert train_labels.dtype == np.int64
    np.testing.assert_array_equal(dataset.load("val")[0], images[25:])
    assert dataset.info.splits["train"].class_counts == np.bincount(labels[:25], minlength=3).tolist()
    assert (dataset.root / "notes.txt").read_bytes() == b"hello\n"


def test_shards_are_bounded_and_streamed(tmp_path: Path) -> None:
    images, _ = sample(25)
    dataset = Dataset(write(tmp_path / "ds", {"train": [7, 7, 11]}, max_shard_bytes=10 * PIXELS))
    assert dataset.info.splits["train"].shards == [f"train-0000{i}.safetensors" for i in range(3)]
    sizes = [len(shard_images) for shard_images, _ in dataset.iter_shards("train")]
    assert sizes == [10, 10, 5]
    np.testing.assert_array_equal(np.concatenate([i for i, _ in dataset.iter_shards("train")]), images)


def test_writer_copies_batches_so_callers_may_reuse_their_arrays(tmp_path: Path) -> None:
    images, labels = sample(6)
    batch = np.empty_like(images[:3])
    with DatasetWriter(tmp_path / "ds", CLASSES, SHAPE, max_shard_bytes=4 * PIXELS) as writer:
        for start in (0, 3):
            batch[:] = images[start : start + 3]
            writer.write("train", batch, labels[start : start + 3])
    np.testing.assert_array_equal(Dataset(tmp_path / "ds").load("train")[0], images)


def test_empty_split_is_recorded(tmp_path: Path) -> None:
    dataset = Dataset(write(tmp_path / "ds", {"train": [4], "test": []}))
    assert dataset.splits == ["test", "train"]
    assert dataset.count("test") == 0
    images, labels = dataset.load("test")
    assert images.shape == (0, *SHAPE) and images.dtype == np.uint8
    assert labels.shape == (0,) and labels.dtype == np.int64


def test_same_arrays_give_same_bytes_however_batched(tmp_path: Path) -> None:
    first = digests(write(tmp_path / "one", {"train": [25], "val": [6]}))
    second = digests(write(tmp_path / "two", {"train": [3, 9, 13], "val": [1, 5]}))
    assert first == second
    assert len(first) == 6  # dataset.json, notes.txt, three train shards, one val shard


# Run in a fresh process (a test process's allocator may reuse memory it freed before), these print
# how much more was resident at the peak of their work than the arrays they hold.
PEAK = """
import sys
from pathlib import Path
import numpy as np
from mlpipeline.core.shards import Dataset
from mlpipeline.core.shard_writer import DatasetWriter

def peak() -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) * 1024

def reset() -> int:
    Path("/proc/self/clear_refs").write_text("5")  # the peak so far: what is resident now
    return peak()
"""
EXTRA_AT_THE_PEAK_OF_A_READ = (
    PEAK
    + """
dataset = Dataset(sys.argv[1])
before = reset()
((images, labels),) = dataset.iter_shards("train")
print(peak() - before - images.nbytes - labels.nbytes)
"""
)
EXTRA_AT_THE_PEAK_OF_WRITING_TWO_SPLITS = (
    PEAK
    + """
batch = np.ones((455, 3, 32, 32), dtype=np.uint8)
labels = np.zeros(455, dtype=np.int64)
with DatasetWriter(sys.argv[1], ["a"], batch.shape[1:], max_shard_bytes=4 << 20) as writer:
    before = reset()
    for split, batches in (("first", 9), ("second", 9)):  # 3 shards of 1,365 images each
        for _ in range(batches):
            writer.write(split, batch, labels)
print(peak() - before)
"""
)


def extra_resident(script: str, root: Path) -> int:
    command = [sys.executable, "-c", script, str(root)]
    return int(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's resettable peak RSS")
def test_a_shard_is_read_into_its_arrays_with_no_second_copy(tmp_path: Path) -> None:
    """safetensors' default memory map left the file's pages resident beside the arrays copied out
    of them: twice the shard at each read's peak (32 MiB more in every stage reading shards)."""
    images, labels = sample(200_000)  # 4 MB
    with DatasetWriter(tmp_path / "data", CLASSES, SHAPE) as writer:
        writer.write("train", images, labels)
    assert extra_resident(EXTRA_AT_THE_PEAK_OF_A_READ, tmp_path / "data") < images.nbytes / 4


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's resettable peak RSS")
def test_a_writer_holds_one_shard_buffer_whatever_the_number_of_splits(tmp_path: Path) -> None:
    """A split's buffer stayed resident after its shards were written: each split written in turn
    (augment's real and synthetic) added a full shard to the peak."""
    shard = 4 << 20
    assert extra_resident(EXTRA_AT_THE_PEAK_OF_WRITING_TWO_SPLITS, tmp_path / "data") < 1.5 * shard


def test_unknown_split_is_named(tmp_path: Path) -> None:
    dataset = Dataset(write(tmp_path / "ds", {"train": [2]}))
    with pytest.raises(PipelineError, match=r"dataset.json: has no split 'test'"):
        dataset.load("test")


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda shard: shard.unlink(), "shard listed in dataset.json is missing"),
        (lambda shard: shard.write_bytes(b"not a safetensors file"), "not a readable safetensors shard"),
        (lambda shard: shard.write_bytes(shard.read_bytes()[:-7]), "not a readable safetensors shard"),
    ],
)
def test_damaged_shard_is_named(tmp_path: Path, damage, expected: str) -> None:
    root = write(tmp_path / "ds", {"train": [12]})
    shard = root / "train-00001.safetensors"
    damage(shard)
    dataset = Dataset(root)
    with pytest.raises(PipelineError) as caught:
        dataset.load("train")
    assert str(caught.value).startswith(f"{shard}: {expected}")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "not found"),
        ("{", "not valid JSON"),
        ('{"format_version": 99}', "format_version 99, expected 3"),
        ('{"format_version": 2}', "format_version 2, written by an older mlpipeline; rerun"),
        ('{"format_version": 3, "classes": []}', "malformed dataset metadata"),
    ],
)
def test_bad_metadata_is_named(tmp_path: Path, content: str | None, expected: str) -> None:
    root = write(tmp_path / "ds", {"train": [2]})
    meta = root / META_FILE
    if content is None:
        meta.unlink()
    else:
        meta.write_text(content)
    with pytest.raises(PipelineError) as caught:
        Dataset(root)
    assert str(caught.value).startswith(f"{meta}: {expected}")


def test_each_shard_fingerprint_is_the_sha256_of_its_bytes(tmp_path: Path) -> None:
    root = write(tmp_path / "ds", {"train": [12], "val": [3]}, max_shard_bytes=5 * PIXELS)
    info = Dataset(root).info
    for split in info.splits.values():
        assert split.sha256 == {
            name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in split.shards
        }
    assert len(info.splits["train"].sha256) == 3


def test_fingerprints_that_do_not_match_the_shard_list_are_refused(tmp_path: Path) -> None:
    root = write(tmp_path / "ds", {"train": [12]})
    meta = json.loads((root / META_FILE).read_text())
    del meta["splits"]["train"]["sha256"]["train-00001.safetensors"]
    (root / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(
        PipelineError, match=r"dataset.json: malformed dataset metadata .*sha256 lists \['train-00000"
    ):
        Dataset(root)


def test_writer_refuses_arrays_that_break_the_format(tmp_path: Path) -> None:
    images, labels = sample(4)
    with DatasetWriter(tmp_path / "ds", CLASSES, SHAPE) as writer:
        with pytest.raises(ValueError, match="images must be uint8"):
            writer.write("train", images.astype(np.float32), labels)
        with pytest.raises(ValueError, match="images must be uint8"):
            writer.write("train", images[:, :, :3], labels)
        with pytest.raises(ValueError, match="labels must have shape"):
            writer.write("train", images, labels[:3])
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            writer.write("train", images, labels + 3)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_failure_inside_the_writer_leaves_nothing(tmp_path: Path) -> None:
    images, labels = sample(30)
    writer = DatasetWriter(tmp_path / "ds", CLASSES, SHAPE, max_shard_bytes=10 * PIXELS)
    with pytest.raises(RuntimeError, match="boom"), writer:
        writer.write("train", images, labels)  # three shards already on disk, aside
        assert len(list(tmp_path.glob(".ds.tmp-*/*.safetensors"))) == 3
        raise RuntimeError("boom")
    assert leftovers(tmp_path) == []


def test_failure_keeps_the_previous_dataset(tmp_path: Path) -> None:
    root = write(tmp_path / "ds", {"train": [5]})
    before = digests(root)
    with pytest.raises(RuntimeError), DatasetWriter(root, CLASSES, SHAPE) as writer:
        writer.write("train", *sample(3, seed=1))
        raise RuntimeError("boom")
    assert digests(root) == before
    assert leftovers(tmp_path) == ["ds"]


def test_success_replaces_the_previous_dataset(tmp_path: Path) -> None:
    root = write(tmp_path / "ds", {"train": [12]}, max_shard_bytes=5 * PIXELS)
    write(root, {"val": [3]})
    assert leftovers(root) == ["dataset.json", "notes.txt", "val-00000.safetensors"]
    assert leftovers(tmp_path) == ["ds"]


def test_split_reader_reads_any_rows_across_shards(tmp_path: Path) -> None:
    dataset = Dataset(write(tmp_path / "ds", {"train": [7, 7, 11], "val": [3]}, max_shard_bytes=10 * PIXELS))
    images, labels = dataset.load("train")
    reader = SplitReader.open(dataset, "train")
    assert len(reader) == 25 and [len(layout.labels) for layout in reader.layouts] == [10, 10, 5]
    np.testing.assert_array_equal(reader.labels, labels)

    rows = np.array([24, 0, 13, 9, 10, 13])  # every shard, a shard edge, a row twice
    out = np.empty((len(rows), *SHAPE), dtype=np.uint8)
    reader.read(rows, out)
    np.testing.assert_array_equal(out, images[rows])
    with pytest.raises(ValueError, match="C-contiguous"):
        reader.read(rows[:2], np.empty((4, *SHAPE), dtype=np.uint8)[::2])
    np.testing.assert_array_equal(np.concatenate(list(reader.shards())), images)

    val = SplitReader.open(dataset, "val")
    both = SplitReader.concat([reader, val])
    assert len(both) == 28 and both.nbytes == 28 * PIXELS
    out = np.empty((2, *SHAPE), dtype=np.uint8)
    both.read(np.array([26, 3]), out)
    np.testing.assert_array_equal(out, [dataset.load("val")[0][1], images[3]])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: path.unlink(), "shard listed in dataset.json is missing"),
        (lambda path: path.write_bytes(b"\x05"), "not a readable safetensors shard"),
        (lambda path: path.write_bytes(path.read_bytes()[:-30]), "shorter than its header says"),
    ],
)
def test_split_reader_names_a_damaged_shard(tmp_path: Path, damage, message: str) -> None:
    dataset = Dataset(write(tmp_path / "ds", {"train": [7, 7, 11]}, max_shard_bytes=10 * PIXELS))
    damage(tmp_path / "ds" / "train-00001.safetensors")
    with pytest.raises(PipelineError, match=rf"train-00001.safetensors: {message}"):
        reader = SplitReader.open(dataset, "train")
        list(reader.shards())


def test_split_reader_of_a_missing_split_names_the_file(tmp_path: Path) -> None:
    dataset = Dataset(write(tmp_path / "ds", {"train": [4]}))
    with pytest.raises(PipelineError, match=r"dataset.json: has no split 'val'"):
        SplitReader.open(dataset, "val")


def flip_last_byte_keeping_mtime(path: Path) -> None:
    """What ``dvc status`` cannot see: same size, same mtime, one bit of an image changed."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def changed_shard_message(shard: Path) -> str:
    return (
        f"{shard}: its bytes differ from the sha256 dataset.json records (changed after the stage wrote "
        f"it, maybe keeping its size and mtime, which dvc status trusts); restore it with dvc checkout "
        f"--relink {shard}"
    )


@pytest.mark.parametrize(
    "read",
    [
        lambda root: Dataset(root).load("train"),
        lambda root: list(SplitReader.open(Dataset(root), "train").shards()),
    ],
    ids=["Dataset", "SplitReader.shards"],
)
def test_a_shard_read_whole_is_checked_against_its_sha256(tmp_path: Path, read) -> None:
    root = write(tmp_path / "ds", {"train": [12]})
    shard = root / "train-00001.safetensors"
    flip_last_byte_keeping_mtime(shard)
    with pytest.raises(PipelineError) as caught:
        read(root)
    assert str(caught.value).startswith(changed_shard_message(shard))
    assert "\n" not in str(caught.value)
