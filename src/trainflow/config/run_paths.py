"""Which config keys are a run's own folders: not params, so that runs differ in params only where they differ.

Every trial of a sweep writes under its own output folder, so its checkpoint
folder (`callbacks.model_checkpoint.dirpath`), Lightning's `default_root_dir`
and the `paths.*` folders differ between any two runs. As params they would
be the first "differences" MLflow's compare view plots, crowding out the
swept values. They stay in each run's `config.yaml` artifact.

The rule: every `paths.*` key (the folders a run is given, never what it
learns from), and every key whose value interpolates a per-run folder
(`paths.output_dir`, `paths.log_dir`, `paths.cache_dir`, `paths.work_dir`,
Hydra's runtime) or another such key. Data files under `paths.root_dir` stay
params: they say what the run read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

FOLDERS = "paths."
PER_RUN = ("paths.output_dir", "paths.log_dir", "paths.cache_dir", "paths.work_dir", "hydra:")


def run_path_keys(cfg: DictConfig) -> set[str]:
    """The dotted keys of `cfg` (as `tracking.params.flatten` names them) that are per-run folders."""
    raw = _flat_raw(OmegaConf.to_container(cfg, resolve=False))
    found = {k for k in raw if k.startswith(FOLDERS)}
    targets = set(PER_RUN)
    while True:
        # `${paths.output_dir}/x` and `${hydra:runtime.output_dir}`, not `${paths.output_dirs}`
        names = "|".join(re.escape(t) + ("" if t.endswith(":") else r"(?![\w.])") for t in sorted(targets))
        pattern = re.compile(r"\$\{(?:" + names + ")")
        more = {k for k, v in raw.items() if k not in found and pattern.search(v)}
        if not more:
            return found
        found |= more
        targets |= more


def without_run_paths(params: Mapping[str, str], cfg: DictConfig) -> dict[str, str]:
    """`params` less the per-run folders of `cfg`."""
    skip = run_path_keys(cfg)
    return {k: v for k, v in params.items() if k not in skip}


def _flat_raw(node: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys to their unresolved text; lists stay one value, as in tracking.params.flatten."""
    flat: dict[str, str] = {}
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(value, Mapping) and value:
                flat.update(_flat_raw(value, f"{prefix}{key}."))
            else:
                flat[f"{prefix}{key}"] = str(value)
    return flat
