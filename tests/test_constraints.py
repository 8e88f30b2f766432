"""constraints.txt pins every package `make setup` installs; these checks keep it honest."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def pinned() -> dict[str, str]:
    """Package name (canonical) -> the version constraints.txt pins."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def declared() -> list[Requirement]:
    """pyproject.toml's dependencies and dev extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(spec) for spec in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = pinned()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        if name == "torch":  # pinned in pyproject.toml alone (CPU and CUDA builds share the pin)
            assert name not in pins, "constraints.txt must not pin torch: a GPU machine needs the CUDA build"
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        assert name in pins, f"{requirement.name} is not in constraints.txt: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pins[name]}, outside pyproject.toml's "
            f"{requirement.specifier}: run `make lock`"
        )


def test_the_environment_holds_the_pinned_versions() -> None:
    # make setup installs with -c constraints.txt and reinstalls when the file changes.
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {
        name: (version, installed[name])
        for name, version in pinned().items()
        if installed.get(name, version) != version
    }
    assert not wrong, f"installed versions differ from constraints.txt (pinned, installed): {wrong}"


def test_the_pre_commit_hook_runs_the_pinned_ruff() -> None:
    # `make lint` and the pre-commit hook must judge the code alike; `make lock` may move ruff.
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    (hook,) = [repo for repo in config["repos"] if repo["repo"].endswith("/ruff-pre-commit")]
    assert hook["rev"] == f"v{pinned()['ruff']}", "bump the ruff rev in .pre-commit-config.yaml too"


def test_the_params_schema_hook_runs_the_pinned_check_jsonschema() -> None:
    # A local hook on the venv's copy: no hook repo to clone, and the version constraints.txt pins.
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = [hook for repo in config["repos"] if repo["repo"] == "local" for hook in repo["hooks"]]
    (hook,) = [hook for hook in hooks if hook["id"] == "params-schema"]
    assert hook["language"] == "system" and hook["entry"].split()[0] == ".venv/bin/check-jsonschema"
    assert "check-jsonschema" in {canonicalize_name(r.name) for r in declared()}
    assert "check-jsonschema" in pinned()
