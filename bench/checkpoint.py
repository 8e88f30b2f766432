"""What a checkpoint costs: seconds and bytes per save, for the demo's CNN and a ResNet-50-sized
model, on CPU, against ``torch.save`` of the same state (the pickle format checkpoints had).

    nice -n 10 python bench/checkpoint.py [--repeat 5]

The state is what the train loop saves within an epoch (``Trainer.state_dict`` plus the place
in the epoch): the weights, AdamW's two moments after one step, the best epoch's weights, the
history, and one rank's sums and random generators' states. Per model it prints the bytes and
the median seconds of each part of a save: encoding (safetensors + JSON), sealing (the sha256),
writing to a local folder (atomic: fsync and rename) and to a local S3 server (rclone on
loopback: the request path, not a network); a local save's total against ``torch.save`` to the
same folder, and its write against a bare write and fsync of the same bytes (the floor); and a
resume's read, check and decode. All are run in turns, one of each per round. With checkpoints
every N minutes, the work a preemption loses is at most N minutes plus one save; the share of
time saves take is the save's seconds over N x 60.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mlpipeline.core.seeding import random_state
from mlpipeline.devtools import s3server
from mlpipeline.modeling.config import ModelConfig
from mlpipeline.modeling.network import build_model
from mlpipeline.training.checkpoint_store import LocalStore, ObjectStore, seal, unseal
from mlpipeline.training.state_codec import decode, encode

REPO_ROOT = Path(__file__).resolve().parents[1]
BUCKET = "bench"


def demo_cnn() -> tuple[nn.Module, torch.Tensor]:
    """params.yaml's convnet on the demo's 8x8 grayscale digits, and a batch of 128."""
    classes = [str(digit) for digit in range(10)]
    config = ModelConfig(classes, [1, 8, 8], widths=[32, 64, 128], dropout=0.25, mean=[0.5], std=[0.25])
    return build_model(config), torch.randint(0, 256, (128, 1, 8, 8), dtype=torch.uint8)


def resnet50() -> tuple[nn.Module, torch.Tensor]:
    """transformers' ResNet at its defaults (ResNet-50's layout, 25.6M parameters), 1000 classes."""
    from transformers import ResNetConfig, ResNetForImageClassification

    model = ResNetForImageClassification(ResNetConfig(num_labels=1000))
    return _Logits(model), torch.rand(2, 3, 64, 64)


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images).logits


def training_state(model: nn.Module, batch: torch.Tensor) -> dict:
    """The state a checkpoint within an epoch holds, after one AdamW step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = batch.float() if batch.dtype == torch.uint8 else batch
    model(images).float().logsumexp(dim=1).mean().backward()
    optimizer.step()
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=1000)
    weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    sums = (torch.zeros(()), torch.zeros(()), torch.zeros((), dtype=torch.long), 0)
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "scaler": {},
        "history": [],
        "best_epoch": 0,
        "best_weights": weights,
        "bad_epochs": 0,
        "within_epoch": {"epoch": 1, "step": 1, "ranks": [{"sums": sums, "random": random_state()}]},
    }


def interleaved_medians(works: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """The median seconds of each of ``works``, run in turns (one of each per round), so that load
    from other processes and the page cache's state hit them all alike."""
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeat):
        for name, work in works.items():
            started = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def torch_save(state: dict, path: Path) -> None:
    with open(path, "wb") as out:
        torch.save(state, out)
        out.flush()
        os.fsync(out.fileno())


def raw_write(parts: list[bytes], path: Path) -> None:
    """The floor of a local write: the same bytes, written and synced in place."""
    with open(path, "wb") as out:
        for part in parts:
            out.write(part)
        out.flush()
        os.fsync(out.fileno())


def measure(name: str, state: dict, folder: Path, bucket: ObjectStore, repeat: int) -> None:
    encoded = encode(state)
    sealed = seal(encoded)
    local = LocalStore(folder)
    times = interleaved_medians(
        {
            "encode": lambda: encode(state),
            "seal (sha256)": lambda: seal(encoded),
            "write local": lambda: local.write("key/latest.ckpt", sealed),
            "bare write": lambda: raw_write(sealed, folder / "raw"),
            "torch.save": lambda: torch_save(state, folder / "state.pt"),
            "read+check+decode": lambda: decode(unseal(local.read("key/latest.ckpt"), "bench")),
            # last: the server's own writing of the object to disk goes on after the upload returns
            "write S3": lambda: bucket.write("key/latest.ckpt", sealed),
        },
        repeat,
    )
    floor, pickled = times.pop("bare write"), times.pop("torch.save")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    size, pickle_size = sum(map(len, sealed)) / 1e6, len(buffer.getvalue()) / 1e6
    local_save = times["encode"] + times["seal (sha256)"] + times["write local"]
    s3_save = local_save - times["write local"] + times["write S3"]
    print(f"{name}: {size:,.1f} MB a checkpoint (torch.save: {pickle_size:,.1f} MB)")
    for part, seconds in times.items():
        print(f"  {part:<18} {seconds:8.3f} s")
    print(f"  a local save {local_save:.3f} s: {local_save / pickled:.2f}x torch.save's {pickled:.3f} s;")
    bare = f"a bare write and fsync of the bytes ({floor:.3f} s)"
    print(f"    its write {times['write local'] / floor:.2f}x {bare}")
    share = 100 * local_save / 600
    print(f"  a save to S3 {s3_save:.3f} s; every 10 minutes, saves take {share:.2f}% of the time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    (REPO_ROOT / ".cache").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=REPO_ROOT / ".cache") as scratch:  # the disk checkpoints use
        server = s3server.start(Path(scratch) / "objects", buckets=[BUCKET])
        try:
            import s3fs

            fs = s3fs.S3FileSystem(
                key=s3server.ACCESS_KEY_ID,
                secret=s3server.SECRET_ACCESS_KEY,
                client_kwargs={"endpoint_url": server.endpoint},
            )
            for name, make in (("demo CNN", demo_cnn), ("ResNet-50-sized", resnet50)):
                bucket = ObjectStore(f"s3://{BUCKET}/checkpoints", Path(scratch))
                bucket.fs = fs
                measure(name, training_state(*make()), Path(scratch) / name, bucket, args.repeat)
        finally:
            s3server.stop(server)


if __name__ == "__main__":
    main()
