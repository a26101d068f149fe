"""A logged model's requirements, read from the project's uv.lock.

MLflow's requirement inference imports the model in a subprocess on every
log_model (seconds each: bench/README.md); the lock already says exactly what
the model runs with.
Markers are evaluated for the running interpreter, so the list is what this
environment was built from (no Windows-only packages, one numpy).
"""

from __future__ import annotations

import hashlib
import tomllib
from collections import deque
from pathlib import Path
from typing import Any

from packaging.markers import Marker

from trainflow.errors import ConfigError

PROJECT = "trainflow"


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _applies(dep: dict[str, Any], extra: str = "") -> bool:
    marker = dep.get("marker")
    return marker is None or Marker(marker).evaluate({"extra": extra})


def locked_requirements(lock_path: Path, project: str = PROJECT) -> list[str]:
    """`name==version` for the project's runtime dependency closure (no dev group)."""
    try:
        lock = tomllib.loads(lock_path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{lock_path}: cannot read the lock for model requirements: {exc}") from exc
    entries: dict[str, list[dict[str, Any]]] = {}
    for package in lock.get("package", []):
        entries.setdefault(_norm(package["name"]), []).append(package)
    roots = entries.get(_norm(project))
    if not roots:
        raise ConfigError(f"{lock_path}: no package '{project}' in the lock")

    pinned: dict[str, str] = {}
    seen: set[tuple[str, str, str]] = set()
    queue: deque[dict[str, Any]] = deque(d for d in roots[0].get("dependencies", []) if _applies(d))
    while queue:
        dep = queue.popleft()
        name = _norm(dep["name"])
        candidates = [p for p in entries.get(name, []) if "version" not in dep or p.get("version") == dep["version"]]
        if not candidates:
            continue
        package = candidates[0]
        extras = tuple(sorted(dep.get("extra", [])))
        key = (name, package.get("version", ""), ",".join(extras))
        if key in seen:
            continue
        seen.add(key)
        if "version" in package:
            pinned[package["name"]] = package["version"]
        queue.extend(d for d in package.get("dependencies", []) if _applies(d))
        for extra in extras:
            queue.extend(d for d in package.get("optional-dependencies", {}).get(extra, []) if _applies(d, extra))
    return [f"{name}=={version}" for name, version in sorted(pinned.items(), key=lambda kv: _norm(kv[0]))]


# the run's environment, as `reproduce` compares it: sha256 of uv.lock


def lock_digest(root: Path) -> str:
    """sha256 of the project's uv.lock ("" without one): equal digests, equal locked environments."""
    lock = root / "uv.lock"
    return hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else ""
