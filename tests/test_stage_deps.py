"""dvc.yaml and the stage modules, kept in step.

DVC reruns a stage when one of its deps changes, and knows nothing of Python imports: a module a
stage runs but does not list leaves stale outputs after an edit, and a listed file it never runs
reruns it for nothing. So each stage's code deps must be exactly the ``src/`` modules its module
imports, transitively (a directory dep covers the modules in it), and its data deps and outs
exactly the paths it names from ``mlpipeline.core.paths``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from mlpipeline.core import paths

SRC = REPO_ROOT / "src"
STAGES = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
PIPELINE_PATHS = {name: value for name, value in vars(paths).items() if isinstance(value, Path)}


def module_file(module: str) -> Path | None:
    """The source file of ``module`` (repo-relative), or None when it is no module under src/."""
    base = Path("src", *module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if (REPO_ROOT / candidate).is_file():
            return candidate
    return None


def imported(file: Path, module: str) -> Iterator[str]:
    """Every name an import statement in ``file`` (the module ``module``) may load as a module."""
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse((REPO_ROOT / file).read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parent = package.split(".")[: len(package.split(".")) + 1 - node.level] if node.level else []
            base = ".".join([*parent, *([node.module] if node.module else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`


def import_closure(module: str) -> dict[str, Path]:
    """Every mlpipeline module that running ``module`` loads (packages' __init__ included)."""
    found: dict[str, Path] = {}
    pending = [module]
    while pending:
        parts = pending.pop().split(".")
        for end in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            name = ".".join(parts[:end])
            file = module_file(name)
            if name.startswith("mlpipeline") and file is not None and name not in found:
                found[name] = file
                pending.extend(imported(file, name))
    return found


def has_code(file: Path) -> bool:
    """False for an ``__init__.py`` holding at most a docstring: it cannot change an output."""
    if file.name != "__init__.py":
        return True
    body = ast.parse((REPO_ROOT / file).read_text()).body
    docstring = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) if body else False
    return len(body) > int(docstring)


def covers(dep: Path, path: Path) -> bool:
    return path == dep or dep in path.parents


def declared(stage: str, kinds: tuple[str, ...]) -> list[Path]:
    entries = [entry for kind in kinds for entry in STAGES[stage].get(kind, [])]
    return [Path(next(iter(entry)) if isinstance(entry, dict) else entry) for entry in entries]


def test_the_closure_follows_relative_package_and_from_imports() -> None:
    # A guard on the walk itself: train reaches training.loop only through training.* modules.
    closure = import_closure("mlpipeline.stages.train")
    assert {"mlpipeline.training.loop", "mlpipeline.core.paths", "mlpipeline.training"} <= set(closure)
    assert "mlpipeline.stages.evaluate" not in closure


@pytest.mark.parametrize("stage", STAGES)
def test_code_deps_are_exactly_the_modules_the_stage_runs(stage: str) -> None:
    modules = [file for file in import_closure(f"mlpipeline.stages.{stage}").values() if has_code(file)]
    deps = [dep for dep in declared(stage, ("deps",)) if dep.parts[0] == "src"]
    unlisted = sorted(str(m) for m in modules if not any(covers(dep, m) for dep in deps))
    unused = sorted(str(dep) for dep in deps if not any(covers(dep, m) for m in modules))
    assert not unlisted, f"dvc.yaml: stage {stage} runs {unlisted}: add them to its deps"
    assert not unused, f"dvc.yaml: stage {stage} lists {unused} but never imports them: drop them"
    # A folder dep reruns the stage on an edit of any module in it: each must be one it runs.
    folders = [dep for dep in deps if (REPO_ROOT / dep).is_dir()]
    never_run = sorted(str(f) for dep in folders for f in code_files(dep) if f not in modules)
    assert not never_run, f"dvc.yaml: stage {stage} lists a folder holding {never_run}, which it never runs"


def code_files(folder: Path) -> list[Path]:
    """The modules under a folder dep that could change an output (repo-relative)."""
    files = [f.relative_to(REPO_ROOT) for f in sorted((REPO_ROOT / folder).rglob("*.py"))]
    return [f for f in files if has_code(f)]


def named_paths(stage: str) -> dict[str, Path]:
    """The paths the stage module imports from mlpipeline.core.paths, by name."""
    file = REPO_ROOT / "src/mlpipeline/stages" / f"{stage}.py"
    names = [
        alias.name
        for node in ast.walk(ast.parse(file.read_text()))
        if isinstance(node, ast.ImportFrom) and node.module == "mlpipeline.core.paths"
        for alias in node.names
    ]
    return {name: PIPELINE_PATHS[name] for name in names}


@pytest.mark.parametrize("stage", STAGES)
def test_data_paths_are_exactly_the_deps_and_outs(stage: str) -> None:
    named = named_paths(stage)
    data = [p for p in declared(stage, ("deps", "outs", "metrics", "plots")) if p.parts[0] != "src"]
    data = [p for p in data if not str(p).startswith("${")]  # ${ingest.source}: a param, not a path
    undeclared = sorted(name for name, path in named.items() if not any(covers(path, p) for p in data))
    unnamed = sorted(str(p) for p in data if not any(covers(path, p) for path in named.values()))
    assert not undeclared, f"dvc.yaml: stage {stage} reads or writes {undeclared} but does not list them"
    assert not unnamed, f"dvc.yaml: stage {stage} lists {unnamed}, which its module never names"


def spelled_paths(file: Path) -> Iterator[str]:
    """String literals in ``file`` (not docstrings) that spell a path of mlpipeline.core.paths."""
    spellings = {str(path) for path in PIPELINE_PATHS.values()}
    tree = ast.parse((REPO_ROOT / file).read_text())
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in docstrings]
    for text in strings:
        if isinstance(text, str) and any(text == s or text.startswith(f"{s}/") for s in spellings):
            yield text


@pytest.mark.parametrize("stage", STAGES)
def test_stage_code_spells_no_pipeline_path_itself(stage: str) -> None:
    # Otherwise the names checked above would not be all the paths it uses.
    closure = import_closure(f"mlpipeline.stages.{stage}").values()
    spelled = {str(f): list(spelled_paths(f)) for f in closure if f != Path("src/mlpipeline/core/paths.py")}
    assert not {f: s for f, s in spelled.items() if s}, "use the names in mlpipeline.core.paths"
