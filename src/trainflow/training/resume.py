"""Continuing an interrupted train run from its last logged checkpoint.

The checkpoint holds weights, optimizer, scheduler, loop counters, callback
state and the train loader's position (Lightning; the loader is
`trainflow.data.resumable_loader`), plus the RNG states (`RngState` below)
and the module's metric sums (`MetricStates`), so a deterministic run that
is interrupted and resumed, at an epoch's start or inside it, ends where an
uninterrupted one would.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback

from trainflow.errors import UriError, first_line

log = logging.getLogger(__name__)

_CKPT_KEY = "trainflow_rng"
_METRICS_KEY = "trainflow_metric_states"


class RngState(Callback):
    """Save and restore python, numpy and torch RNG states with each checkpoint.

    Lightning restores the loops but not the generators that shuffle the
    next epoch; without them a resumed run draws other batches. States are
    stored as tensors and ints so the checkpoint still loads with
    `weights_only=True`.
    """

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        version, state, gauss = random.getstate()
        checkpoint[_CKPT_KEY] = {
            "torch": torch.get_rng_state(),
            "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": {"version": version, "state": torch.tensor(state, dtype=torch.int64),
                       "gauss": gauss},
        }

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(_CKPT_KEY)
        if not saved:
            return
        torch.set_rng_state(saved["torch"])
        n = saved["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached"]))
        p = saved["python"]
        random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


class MetricStates(Callback):
    """Save and restore what every torchmetrics metric of the module has summed so far.

    A module's metrics accumulate over an epoch (trainflow's classifiers log
    the epoch's train loss and accuracy at its end) and are not part of its
    state_dict unless made persistent. Restored from a checkpoint saved
    inside an epoch without them, that epoch's train metrics would leave out
    its first batches. They are kept beside the weights, not in them, so
    `best.ckpt` and the logged model hold the module's own keys only.
    """

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        from torchmetrics import Metric

        checkpoint[_METRICS_KEY] = {
            name: {"states": {key: _detached(value) for key, value in metric.metric_state.items()},
                   "updates": int(metric._update_count)}
            for name, metric in pl_module.named_modules() if isinstance(metric, Metric)
        }

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        modules = dict(pl_module.named_modules())
        for name, saved in checkpoint.get(_METRICS_KEY, {}).items():
            metric = modules.get(name)
            if metric is None:
                continue
            for key, value in saved["states"].items():
                setattr(metric, key, value.to(metric.device) if isinstance(value, torch.Tensor)
                        else [v.to(metric.device) for v in value])
            metric._update_count = saved["updates"]
            metric._computed = None


def _detached(value: Any) -> Any:
    """A metric state (a tensor or a list of them) as CPU tensors, so `weights_only` loads it."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    return [v.detach().cpu().clone() for v in value]


def prepare_resume(client: Any, run_id: str, checkpoint_dir: Path, staging: Path) -> Path | None:
    """Download the run's `last` (and `best`) checkpoints, re-homed in this run's folder.

    None when the run has no `last` yet (`last` is saved when an epoch ends,
    and inside one only when configured; the run was stopped before the
    first): the resumed fit then starts over, in the same run, from the same seed.

    ModelCheckpoint only restores its best score and paths when the
    checkpoint's dirpath equals its own; a resumed process has a new Hydra
    output folder, so the paths inside the checkpoint are rewritten to it and
    `best.ckpt` is put back where they now point.
    """
    from mlflow.artifacts import download_artifacts

    try:
        has_last = bool(client.list_artifacts(run_id, "checkpoints/last"))
        if has_last:
            staging.mkdir(parents=True, exist_ok=True)
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            last_dir = Path(download_artifacts(artifact_uri=f"runs:/{run_id}/checkpoints/last",
                                               dst_path=str(staging)))
    except Exception as exc:
        raise UriError(f"resume: cannot download checkpoints/last of run {run_id}: "
                       f"{first_line(exc)}") from exc
    if not has_last:
        _check_start_over(client, run_id)
        return None
    checkpoint = torch.load(last_dir / "last.ckpt", map_location="cpu", weights_only=True)
    old_dirs = set()
    for key, state in checkpoint.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and isinstance(state, dict) and state.get("dirpath"):
            old_dirs.add(str(state["dirpath"]))
            checkpoint["callbacks"][key] = _rehome(state, str(state["dirpath"]), str(checkpoint_dir))
    try:
        best_dir = Path(download_artifacts(artifact_uri=f"runs:/{run_id}/checkpoints/best",
                                           dst_path=str(staging / "best")))
        shutil.copy(best_dir / "best.ckpt", checkpoint_dir / "best.ckpt")
    except Exception:
        pass
    resumed = staging / "resume.ckpt"
    torch.save(checkpoint, resumed)
    log.info("resume: run %s continues %s", run_id, resume_point(checkpoint))
    return resumed


def resume_point(checkpoint: dict[str, Any]) -> str:
    """Where a fit restarted from `checkpoint` goes on: epoch, batch of the epoch, global step."""
    loader = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or [{}]
    batch = loader[0].get("batches", 0)
    return f"at epoch {checkpoint.get('epoch', 0)}, batch {batch} (global step {checkpoint.get('global_step', 0)})"


def _check_start_over(client: Any, run_id: str) -> None:
    """No `last` because no epoch ended, not because none was ever going to be logged."""
    params = client.get_run(run_id).data.params
    for key in ("tracking.log_checkpoints", "callbacks.model_checkpoint.save_last"):
        if params.get(key) != "True":
            raise UriError(f"resume: run {run_id} has no checkpoints/last to resume from ({key}={params.get(key)})")
    log.info("resume: run %s ended before its first epoch did; starting over in the same run", run_id)


def _rehome(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return new + value[len(old):] if value.startswith(old) else value
    if isinstance(value, dict):
        return {_rehome(k, old, new): _rehome(v, old, new) for k, v in value.items()}
    return value
