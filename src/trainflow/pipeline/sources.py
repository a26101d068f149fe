"""The source files a step can run: its script, everything that imports, and what its config names.

The step cache may reuse a run only if the code that made it is the code we
would run now. A hand-kept list of folders per step had to mirror the import
graph, so moving a module could silently reuse stale runs. Here the list is
derived: the import statements of the step script (at any depth, function
level included) are followed through first-party modules, and so are the
modules that the config's `_target_`s name (Hydra imports those at run
time, so no import statement shows them). Third-party code enters through
`uv.lock`.

Only files are read, nothing is imported: the pipeline computes this in a
process that must not pay for torch. Each file is parsed once per version:
the pipeline keys three steps that share most of their files.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from trainflow.config.static_targets import class_attribute

LOCKFILE = "uv.lock"


def step_sources(root: Path, step: str, scoped: dict[str, Any]) -> list[Path]:
    """Every first-party file `steps/<step>.py` runs with this (scoped) config, plus `uv.lock`, sorted."""
    search = module_roots(root)
    script = root / "steps" / f"{step}.py"
    found = import_closure([script], list(config_targets(scoped)), search)
    lock = root / LOCKFILE
    return sorted({*found, *([lock] if lock.is_file() else [])})


def module_roots(root: Path) -> list[Path]:
    """Where first-party modules live: the project's `src/`, and import paths inside the project.

    A task package outside `src/` (on PYTHONPATH, as the tests' own task is)
    counts as the project's code when it lives in the checkout; installed
    packages are pinned by uv.lock instead.
    """
    project, src = root.resolve(), (root / "src").resolve()
    installed = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}  # the venv may sit in the checkout
    inside = []
    for entry in sys.path:
        path = Path(entry or ".").resolve()
        if (path.is_dir() and path.is_relative_to(project) and path not in (project, src)
                and not any(path.is_relative_to(prefix) for prefix in installed)):
            inside.append(path)
    return [root / "src", *dict.fromkeys(inside)]


def config_targets(node: Any) -> Iterator[str]:
    """Module paths of every `_target_` in a config (a class or function path: the module is its prefix)."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str) and "." in target:
            yield target.rsplit(".", 1)[0]
        for value in node.values():
            yield from config_targets(value)
    elif isinstance(node, list):
        for item in node:
            yield from config_targets(item)


def import_closure(scripts: Iterable[Path], modules: Iterable[str], search: list[Path]) -> set[Path]:
    """Files of `scripts` and of every first-party module they or `modules` import, transitively."""
    seen: set[Path] = set()
    pending: list[Path] = [s for s in scripts if s.is_file()]
    for name in modules:
        pending.extend(module_files(name, search))
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path, search):
            pending.extend(module_files(name, search))
    return seen


def imported_modules(path: Path, search: list[Path]) -> Iterator[str]:
    """Dotted names a file imports, relative imports resolved; `from pkg import mod` yields `pkg.mod` too."""
    stat = path.stat()
    yield from _imported(path, stat.st_mtime_ns, stat.st_size, _package_of(path, search))


@functools.lru_cache(maxsize=4096)
def _imported(path: Path, mtime_ns: int, size: int, package: str | None) -> tuple[str, ...]:
    """Parsed once per file version: the pipeline asks for each step's closure, and they share most files."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            try:
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            except ImportError:  # a relative import beyond the top-level package: Python refuses it too
                continue
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return tuple(names)


def module_files(name: str, search: list[Path]) -> list[Path]:
    """The files that importing `name` executes: each package `__init__.py` on the way, then the module."""
    parts = name.split(".")
    for base in search:
        if not (base / parts[0]).is_dir() and not (base / f"{parts[0]}.py").is_file():
            continue
        files: list[Path] = []
        for depth in range(1, len(parts) + 1):
            stem = base.joinpath(*parts[:depth])
            if (stem / "__init__.py").is_file():
                files.append(stem / "__init__.py")
            elif stem.with_suffix(".py").is_file() and depth == len(parts):
                files.append(stem.with_suffix(".py"))
            elif not stem.is_dir():  # an attribute (`from pkg.mod import func`), not a module
                break
        return files
    return []


def _package_of(path: Path, search: list[Path]) -> str | None:
    for base in search:
        if path.is_relative_to(base):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":  # a package's own file: relative imports start at the package
                parts.pop()
            else:
                parts = parts[:-1]
            return ".".join(parts)
    return None


def declared_strings(target: str, attribute: str) -> tuple[str, ...]:
    """A class's tuple-of-strings attribute (a data module's `preprocessing_keys`), read from its source.

    The pipeline needs what a data module declares before any step starts,
    in a process that must not import the module (torch and Lightning, on a
    cached run that needs neither); `config.static_targets` finds the
    class and its bases as the precheck does. A class whose source cannot be
    read declares nothing here, which makes cache keys stricter, never stale.
    """
    value = class_attribute(target, attribute)
    return tuple(str(item) for item in ast.literal_eval(value)) if value is not None else ()
