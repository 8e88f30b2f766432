"""The package's layout: one folder per role, imports that run downward, no circles.

Each folder under ``src/mlpipeline/`` says in its ``__init__`` docstring what it may import
(``May import: core, ingestion.``); this test holds every import statement to that line (those
inside functions and under ``TYPE_CHECKING`` included), checks that the declared folders form
layers (no folder reaches itself through others), and that no module reaches itself through its
imports. A newcomer reads the layering off the ``__init__`` files; the test keeps them true.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "mlpipeline"
MAY_IMPORT = re.compile(r"^May import: (.+?)\.?$", re.MULTILINE)


def folders() -> list[str]:
    return sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())


def allowed_imports(folder: str) -> set[str]:
    """The folders ``folder``'s ``__init__`` docstring lets it import."""
    docstring = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text())) or ""
    found = MAY_IMPORT.search(docstring)
    assert found, f"src/mlpipeline/{folder}/__init__.py: its docstring needs a 'May import: ...' line"
    words = found.group(1)
    return set() if words.startswith("nothing") else {word.strip() for word in words.split(",")}


def module_name(file: Path) -> str:
    parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(f): f for f in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str) -> Iterator[str]:
    """The mlpipeline modules (or packages) each import statement of ``module`` loads."""
    file = MODULES[module]
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base_parts = package.split(".")[: len(package.split(".")) + 1 - node.level] if node.level else []
            base = ".".join([*base_parts, *([node.module] if node.module else [])])
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
            names = submodules or [base]  # `from pkg import module` loads the module
        else:
            continue
        yield from (name for name in names if name.split(".")[0] == "mlpipeline" and name in MODULES)


def folder_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_package_top_holds_only_folders() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"src/mlpipeline/ holds modules {loose}: move each into the folder of its role"


@pytest.mark.parametrize("folder", folders())
def test_each_folder_imports_only_what_its_docstring_allows(folder: str) -> None:
    allowed = allowed_imports(folder) | {folder}
    unknown = allowed - set(folders())
    assert not unknown, f"src/mlpipeline/{folder}/__init__.py names unknown folders {sorted(unknown)}"
    stray = sorted(
        f"{module} imports {target}"
        for module in MODULES
        if folder_of(module) == folder
        for target in imports_of(module)
        if folder_of(target) not in allowed
    )
    assert not stray, f"{folder} may import only {sorted(allowed)}: {stray}"


def test_the_folders_form_layers() -> None:
    declared = {folder: allowed_imports(folder) for folder in folders()}
    assert declared["core"] == set(), "core is the bottom layer: it imports nothing of ours"
    assert not [f for f, allowed in declared.items() if "stages" in allowed], "nothing imports a stage"
    assert "devtools" not in declared["stages"], "stages never import devtools"
    assert find_cycle(declared) is None, f"folders that import each other: {find_cycle(declared)}"


@pytest.mark.parametrize("folder", folders())
def test_each_folders_docstring_names_its_modules(folder: str) -> None:
    """A reader finds where a thing lives from the ``__init__`` docstrings alone."""
    docstring = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text())) or ""
    modules = sorted(path.stem for path in (PACKAGE / folder).glob("*.py") if path.stem != "__init__")
    unnamed = [module for module in modules if f"``{module}``" not in docstring]
    assert not unnamed, (
        f"src/mlpipeline/{folder}/__init__.py: its docstring names no ``{'``, ``'.join(unnamed)}``"
    )


def test_the_development_guide_states_each_folders_imports_as_its_docstring_does() -> None:
    guide = (REPO_ROOT / "docs" / "development.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)/` \| (.+?) \|$", guide, re.MULTILINE))
    documented = {folder: set(re.findall(r"`(\w+)`", imports)) for folder, imports in rows.items()}
    assert documented == {folder: allowed_imports(folder) for folder in folders()}


def test_no_module_reaches_itself_through_its_imports() -> None:
    graph = {module: set(imports_of(module)) - {module} for module in MODULES}
    cycle = find_cycle(graph)
    assert cycle is None, "an import circle: " + " -> ".join(cycle or [])


def test_the_walk_sees_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    # A guard on the checks themselves: a circle through a lazy import is still a circle.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "mlpipeline.training.params" in set(imports_of("mlpipeline.training.loop"))
    assert "mlpipeline.cache.remote_check" in set(imports_of("mlpipeline.versions.release"))
