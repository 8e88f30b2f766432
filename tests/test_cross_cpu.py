"""The data stages write the same bytes on every CPU: on each code path this one can be forced
onto, and as the committed ``dvc.lock`` records.

A fresh clone's ``make repro`` must leave the ``dvc.lock`` entries of ingest, synthesize and
augment unchanged on any machine, or the shared cache and the run-cache miss. One machine is not
every CPU, but the libraries let it take the code paths they would take on older ones: torch's
kernels (``ATEN_CPU_CAPABILITY``), oneDNN's (``ONEDNN_MAX_CPU_ISA``), MKL's
(``MKL_ENABLE_INSTRUCTIONS``), OpenBLAS's (``OPENBLAS_CORETYPE``), numpy's SIMD loops
(``NPY_DISABLE_CPU_FEATURES``) and glibc's libm variants (``GLIBC_TUNABLES``). And CI, on
whatever machine runs it, checks the committed hashes again. Synthesize is exact by
construction (``synthetic.glyphs``, ``tests/test_glyphs.py``); beyond the demo's params, it is
also run here on RGB images of another shape with every kind of noise its params have.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_ROOT, copy_repo, repo_params
from dvcflow import dvc, file_digests, output_digests

from mlpipeline.core.params import from_mapping
from mlpipeline.core.shard_writer import DatasetWriter
from mlpipeline.core.shards import Dataset
from mlpipeline.stages.ingest import IngestParams, ingest

DATA_STAGES = ["ingest", "synthesize", "augment"]
X86 = platform.machine().lower() in {"x86_64", "amd64"}


def aten_levels() -> list[str]:
    """The ``ATEN_CPU_CAPABILITY`` values this CPU runs, lowest first (torch reports the highest)."""
    native = torch.backends.cpu.get_cpu_capability().lower()
    ladder = ["default", "avx2", "avx512"]
    return ladder[: ladder.index(native) + 1] if native in ladder else ["default", native]


def numpy_dispatched_features() -> list[str]:
    """The SIMD targets numpy picks at run time on this CPU (beyond its build's baseline)."""
    from numpy._core import _multiarray_umath as umath

    return [name for name in umath.__cpu_dispatch__ if umath.__cpu_features__.get(name)]


def lowest_code_paths() -> dict[str, str]:
    """Every library on the oldest code path it can be told to take on this CPU."""
    env = {
        "ATEN_CPU_CAPABILITY": "default",
        "NPY_DISABLE_CPU_FEATURES": " ".join(numpy_dispatched_features()),
    }
    if X86:
        env |= {
            "ONEDNN_MAX_CPU_ISA": "SSE41",
            "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
            "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX2,-FMA,-FMA4,-AVX",
        }
        if "OPENBLAS_CORETYPE" not in os.environ:  # set on CPUs where OpenBLAS needs it: leave it be
            env["OPENBLAS_CORETYPE"] = "Prescott"
    return env


def forced_code_paths() -> dict[str, dict[str, str]]:
    """``lowest``: every library on its oldest path; then each torch level between that and native."""
    between = aten_levels()[1:-1]
    return {"lowest": lowest_code_paths()} | {level: {"ATEN_CPU_CAPABILITY": level} for level in between}


def code_path_taken(env: dict[str, str]) -> tuple[str, list[str]]:
    """torch's CPU capability and numpy's dispatched SIMD targets in a process started with ``env``."""
    probe = (
        "import torch; from numpy._core import _multiarray_umath as u; "
        "print(torch.backends.cpu.get_cpu_capability().lower(), "
        "*[n for n in u.__cpu_dispatch__ if u.__cpu_features__[n]])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    capability, *numpy_targets = out.stdout.split()
    return capability, numpy_targets


def data_stage_outs(repo: Path) -> dict[str, list[dict]]:
    """The outputs (paths and hashes) ``dvc.lock`` records for the data stages."""
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {name: stages[name]["outs"] for name in DATA_STAGES}


def reproduce(repo: Path, env: dict[str, str] | None = None) -> Path:
    """``dvc repro augment`` (ingest, synthesize, augment) in ``repo``, a fresh copy of the project."""
    dvc(repo, "repro", "augment", env=env)
    return repo


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data stages run in a fresh copy with every library on this CPU's own code path."""
    return reproduce(copy_repo(tmp_path_factory.mktemp("native") / "repo"))


@pytest.mark.slow
def test_committed_lock_holds_on_this_machine(native: Path) -> None:
    assert data_stage_outs(native) == data_stage_outs(REPO_ROOT)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "env"), list(forced_code_paths().items()))
def test_every_cpu_code_path_writes_the_same_bytes(
    native: Path, tmp_path: Path, name: str, env: dict[str, str]
) -> None:
    # The forcing took: torch runs that level, and on the lowest path numpy runs its baseline only.
    assert code_path_taken(env) == ("default", []) if name == "lowest" else code_path_taken(env)[0] == name
    forced = reproduce(copy_repo(tmp_path / "repo"), env)
    assert output_digests(forced, DATA_STAGES) == output_digests(native, DATA_STAGES)
    assert data_stage_outs(forced) == data_stage_outs(native)


# Beyond the demo: strong poses, rough edges and pixel noise, on non-square RGB images.
WIDE_SYNTHESIS = {"count": 1500, "rotation": 90, "shear": 1.0, "edge_noise": 0.03, "pixel_noise": 0.2}
SYNTHESIZE = (
    "import json, sys; from pathlib import Path; from mlpipeline.core.params import from_mapping; "
    "from mlpipeline.stages.synthesize import SynthesizeParams, synthesize; "
    "out = Path(sys.argv[3]); "
    "synthesize(from_mapping(SynthesizeParams, json.loads(sys.argv[1]), 'synthesize'), Path(sys.argv[2]), "
    "out / 'synthetic', out, workers=1)"
)


@pytest.fixture(scope="module")
def rgb_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo digits at 20 x 28 (bicubic: many levels), as yellow digits on blue."""
    params = from_mapping(IngestParams, repo_params()["ingest"] | {"image_size": [20, 28]}, "ingest")
    grey = tmp_path_factory.mktemp("grey") / "ingested"
    ingest(dataclasses.replace(params, source=str(REPO_ROOT / params.source)), grey)
    images, labels = Dataset(grey).load("train")
    share = images.astype(np.float64) / 255
    background, ink = (
        np.array([20, 40, 160])[None, :, None, None],
        np.array([250, 200, 30])[None, :, None, None],
    )
    out = tmp_path_factory.mktemp("rgb") / "ingested"
    with DatasetWriter(out, Dataset(grey).classes, (3, 20, 28)) as writer:
        writer.write("train", np.rint(background + share * (ink - background)).astype(np.uint8), labels)
    return out


def synthesize_under(env: dict[str, str], real: Path, out: Path) -> dict[str, str]:
    """md5 of every output file of the synthesize stage's core run on ``real`` with
    ``WIDE_SYNTHESIS``, in a process started with ``env``."""
    section = copy.deepcopy(repo_params()["synthesize"])
    section["count"] = WIDE_SYNTHESIS["count"]
    section["glyphs"] |= {key: value for key, value in WIDE_SYNTHESIS.items() if key != "count"}
    subprocess.run(
        [sys.executable, "-c", SYNTHESIZE, json.dumps(section), str(real), str(out)],
        env={**os.environ, **env},
        check=True,
    )
    return file_digests(out, [out])


@pytest.fixture(scope="module")
def wide_native(rgb_digits: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return synthesize_under({}, rgb_digits, tmp_path_factory.mktemp("wide") / "native")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "env"), list(forced_code_paths().items()))
def test_synthesize_writes_the_same_bytes_on_every_code_path_beyond_the_demo(
    rgb_digits: Path, wide_native: dict[str, str], tmp_path: Path, name: str, env: dict[str, str]
) -> None:
    assert len(wide_native) == 4  # a shard, dataset.json, samples.png and metrics.json
    assert synthesize_under(env, rgb_digits, tmp_path / name) == wide_native


# Beyond the demo's sizes: 224 x 160 RGB, every transform on (the elastic field on its coarse grid;
# with the photo transforms, the crop and the policy's maps composed into the same grid, and every
# integer pixel kernel).
AUGMENT_LARGE = (
    "import hashlib, json, sys, numpy as np, torch; from mlpipeline.core.params import from_mapping; "
    "from mlpipeline.augmentation.transforms import Transforms, augment; "
    "spec = from_mapping(Transforms, json.loads(sys.argv[1]), 'transforms'); "
    "images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 3, 224, 160), dtype=np.uint8)); "
    "print(hashlib.sha256(augment(images, spec, 7, 'large').numpy().tobytes()).hexdigest())"
)


def printed_under(env: dict[str, str], code: str, *args: str) -> str:
    """What ``code`` prints, run with ``args`` in a process started with ``env``."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def augment_large_under(env: dict[str, str], photo: bool) -> str:
    """The hash of ``AUGMENT_LARGE`` run with ``env``: every digit transform on or, with ``photo``,
    every transform a photo recipe uses (the crop, RandAugment, colour jitter, flips) besides."""
    section = copy.deepcopy(repo_params()["augment"]["transforms"])
    section["elastic"]["probability"] = section["affine"]["probability"] = section["cutout"][
        "probability"
    ] = 1
    section["drop_values"] = 0.05
    if photo:
        section["crop"]["probability"] = section["colour"]["probability"] = 1
        section["policy"] |= {"kind": "randaugment", "ops": 3, "magnitude": 15}
        section["flip"] |= {"horizontal": 0.5, "vertical": 0.5}
    return printed_under(env, AUGMENT_LARGE, json.dumps(section))


@pytest.mark.parametrize("photo", [False, True], ids=["digit-transforms", "photo-transforms"])
@pytest.mark.parametrize(("name", "env"), list(forced_code_paths().items()))
def test_augment_at_224_writes_the_same_bytes_on_every_code_path(
    name: str, env: dict[str, str], photo: bool
) -> None:
    assert augment_large_under(env, photo) == augment_large_under({}, photo)


# The noise alone, as a device draws it (the int64 hash: torch's integer kernels at each level).
HASHED_NOISE = (
    "import hashlib, numpy as np, torch; from mlpipeline.core.bitexact import hashed_noise, noise_table; "
    "keys = torch.from_numpy(np.random.default_rng(0).integers(0, 2**32, (6, 2), dtype=np.int64)); "
    "noise = hashed_noise(keys, torch.from_numpy(noise_table(6.0)), (6, 3, 224, 160)); "
    "print(hashlib.sha256(noise.numpy().tobytes()).hexdigest())"
)


@pytest.mark.parametrize(("name", "env"), list(forced_code_paths().items()))
def test_hashed_noise_has_the_same_bits_on_every_code_path(name: str, env: dict[str, str]) -> None:
    assert printed_under(env, HASHED_NOISE) == printed_under({}, HASHED_NOISE)
