"""Which first-party source files a piece of code can run, found by reading import statements.

The step cache needs it (a key must change when any file a step can run
changes) in a process that must not pay for torch, so nothing is imported.

Import statements are followed at any depth, function level included, and
so are the modules that a config's `_target_`s name (Hydra imports those at
run time, so no import statement shows them). Each file is parsed once per
version: the pipeline keys three steps that share most of their files.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


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
            base = _absolute(node.module, node.level, package)
            if base is None:
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


def _absolute(module: str | None, level: int, package: str | None) -> str | None:
    if level == 0:
        return module
    if package is None:
        return None
    parts = package.split(".") if package else []
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, *([module] if module else [])]) or None
