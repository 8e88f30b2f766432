"""What train's check of a transformers arch costs before any training work (modeling/hf_build.py:
the model made on the meta device for the size bound and the head, then built and run on two
images), against the floor the stage paid before it: one bare build of the same model.

    nice -n 10 python bench/arch_check.py

Per arch and input shape it prints the check's seconds, a bare build's, and their ratio; and how
long the size bound takes to refuse a ViT of 200,000 layers (params.yaml's width), which would
take minutes to make. Each arch's modules are imported before the clock starts: a run pays that
once, check or not. Every check runs in a fresh process, so none hits the check's cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = [str(digit) for digit in range(10)]
CASES = [  # (arch, overrides from params.yaml or transformers' defaults, C x H x W)
    ("resnet", "params.yaml", [1, 8, 8]),
    ("vit", "params.yaml", [1, 8, 8]),
    ("resnet", "defaults", [3, 224, 224]),
    ("vit", "defaults", [3, 224, 224]),
]
# One case, in its own process: prints {"check": seconds, "build": seconds} or the refusal.
MEASURE = """
import json, sys, time, yaml
from transformers import AutoModelForImageClassification
from mlpipeline.core.errors import PipelineError
from mlpipeline.modeling import hf, hf_build, hf_overrides
arch, source, shape, classes = json.loads(sys.argv[1])
hf_entries = yaml.safe_load(open("params.yaml"))["train"]["model"]["hf"] if source == "params.yaml" else {}
if source == "deep":
    hf_entries = {arch: {**yaml.safe_load(open("params.yaml"))["train"]["model"]["hf"][arch],
                         "num_hidden_layers": 200_000}}
hf_build.model_class(hf_overrides.arch_config(arch, {}))  # the arch's modules, imported off the clock
started = time.perf_counter()
try:
    network = hf.new_network(arch, hf_entries, classes, shape)
except PipelineError as refused:
    print(json.dumps({"refused": time.perf_counter() - started, "line": str(refused)}))
    sys.exit()
checked = time.perf_counter() - started
started = time.perf_counter()
AutoModelForImageClassification.from_config(hf_build.config_of(network))
print(json.dumps({"check": checked, "build": time.perf_counter() - started}))
"""


def measure(arch: str, source: str, shape: list[int]) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps([arch, source, shape, CLASSES])],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    print("  arch    settings      input        check s   bare build s   ratio")
    for arch, source, shape in CASES:
        times = measure(arch, source, shape)
        size = "x".join(map(str, shape))
        check, build = times["check"], times["build"]
        print(f"{arch:>7}  {source:<12} {size:>10}  {check:>9.2f}  {build:>13.2f}  {check / build:>6.1f}x")
    deep = measure("vit", "deep", [1, 8, 8])
    print(f"vit of 200,000 layers refused in {deep['refused']:.2f} s: {deep['line']}")


if __name__ == "__main__":
    main()
