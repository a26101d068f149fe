"""Where the project lives on disk, independent of the working directory.

Hydra may change the working directory and `mlflow run` runs in the project
directory, so every default path (the embedded tracking store, data cache,
logs) is anchored on the directory that holds `configs/`, never on cwd.
"""

from __future__ import annotations

import os
from pathlib import Path

_MARKERS = ("MLproject", "pyproject.toml")


def project_root() -> Path:
    """The directory holding the primary Hydra config dir, else the nearest
    ancestor of cwd with an MLproject file, else cwd."""
    env = os.environ.get("TRAINFLOW_ROOT")
    if env:
        return Path(env).resolve()
    from_hydra = _root_from_hydra()
    if from_hydra is not None:
        return from_hydra
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if all((candidate / m).exists() for m in _MARKERS):
            return candidate
    return here


def _root_from_hydra() -> Path | None:
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:  # pragma: no cover - hydra is a hard dependency
        return None
    if not HydraConfig.initialized():
        return None
    for source in HydraConfig.get().runtime.config_sources:
        if source.provider == "main" and source.schema == "file":
            return Path(source.path).resolve().parent
    return None
