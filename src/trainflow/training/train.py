"""The train step: data -> model -> callbacks -> trainer -> fit -> test -> register."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from trainflow.config.validate import check_targets
from trainflow.data.task import TaskDataModule, task_data_module
from trainflow.registry.versions import log_trained_model
from trainflow.tracking import tags as tag
from trainflow.tracking.datasets import FetchedDataset, dataset_for_step
from trainflow.tracking.lightning import RunLogger
from trainflow.tracking.run import StepRun
from trainflow.training.checkpoints import RedactedHyperparameters, resolve_checkpoint
from trainflow.training.idle_hooks import hide_idle_batch_hooks
from trainflow.training.instantiate import instantiate_callbacks
from trainflow.training.interrupts import LostInterrupts
from trainflow.training.metrics import scalar_metrics
from trainflow.training.profiler import profiler_kwargs
from trainflow.training.restore import fit_start, restore_mode
from trainflow.training.resume import MetricStates, RngState, prepare_resume

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    metrics: dict[str, float]
    monitored: float | None
    best_checkpoint: Path | None
    dataset: FetchedDataset
    checkpoint_artifacts: dict[str, str] = field(default_factory=dict)
    registered: str | None = None


def train(cfg: DictConfig, run: StepRun, extra_callbacks: Sequence[Any] = ()) -> TrainResult:
    """`extra_callbacks`: objects no config can describe (a sweep's Optuna pruning callback)."""
    import lightning as L

    check_targets(cfg)
    restore_mode(cfg)  # a contradictory ckpt_path/only_weights_load/resume fails before any work
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule = task_data_module(instantiate(cfg.data, _convert_="all"), cfg.data._target_)
    with run.timed("data"):
        dataset = dataset_for_step(cfg.data, datamodule, run, Path(cfg.paths.cache_dir) / "datasets", "training")
    set_data_model_kwargs(cfg, datamodule)
    log.info("Instantiating model <%s>", cfg.model._target_)
    model = instantiate(cfg.model, _convert_="all")
    callbacks = [*instantiate_callbacks(cfg.get("callbacks")), RngState(), MetricStates(), RedactedHyperparameters(),
                 LostInterrupts(run.signalled), *extra_callbacks]
    logger = RunLogger(run.client, run.run_id, cfg.tracking.flush_every_s, cfg.tracking.log_checkpoints,
                       cfg.tracking.outage_grace_s, run.output_dir / "unsynced")
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, **profiler_kwargs(cfg.trainer))
    _skip_nvml_probe(trainer)
    hide_idle_batch_hooks(trainer.callbacks)  # Lightning's own defaults included

    try:
        if cfg.get("train"):
            start = fit_start(cfg, _start_checkpoint(cfg, run, trainer), trainer)  # restore mode: training/restore.py
            with run.timed("fit"):
                trainer.fit(model=model, datamodule=datamodule, ckpt_path=start, weights_only=True)
        metrics = scalar_metrics(trainer.callback_metrics)

        best = best_checkpoint(trainer)
        if cfg.get("test"):
            if best is None:
                log.warning("No best checkpoint found: testing with the current weights")
            with run.timed("test"):
                trainer.test(model=model, datamodule=datamodule, ckpt_path=str(best) if best else None,
                             weights_only=True)
            metrics.update(scalar_metrics(trainer.callback_metrics))
    finally:
        if run.leader:
            logger.close()

    result = TrainResult(
        metrics=metrics,
        monitored=metrics.get(cfg.optimized_metric) if cfg.get("optimized_metric") else None,
        best_checkpoint=best,
        dataset=dataset,
        checkpoint_artifacts=dict(logger.logged_checkpoints),
    )
    if run.leader and cfg.get("train"):
        if cfg.registry.get("log_model", True):
            with run.timed("log_model"):
                result.registered = _log_model(cfg, run, model, datamodule, result, trainer)
        elif "best" in result.checkpoint_artifacts:
            run.set_output(run.artifact_uri(f"{result.checkpoint_artifacts['best']}/best.ckpt"))
    return result


def set_data_model_kwargs(cfg: DictConfig, datamodule: TaskDataModule) -> None:
    """Put what only the dataset knows (vocabulary sizes, label names) into `cfg.model`.

    The data module's `model_kwargs()` (the task contract) is asked once the
    dataset is fetched, before the model is built. Writing the values into
    `cfg.model` (not just passing them to instantiate) matters: that node is
    logged with the weights, so the pyfunc and evaluate rebuild the same network.
    """
    with open_dict(cfg):
        for key, value in datamodule.model_kwargs().items():
            OmegaConf.update(cfg.model, key, value, force_add=True)


def _start_checkpoint(cfg: DictConfig, run: StepRun, trainer: Any) -> Path | None:
    """What fit starts from: the run's own last checkpoint (resume), a given one, or nothing."""
    if cfg.get("resume"):
        callback = getattr(trainer, "checkpoint_callback", None)
        dirpath = Path(callback.dirpath) if callback is not None and callback.dirpath else run.output_dir
        return prepare_resume(run.client, run.run_id, dirpath, run.output_dir / "resume")
    if cfg.get("ckpt_path"):
        return resolve_checkpoint(cfg.ckpt_path, run.output_dir / "start")
    return None


def _skip_nvml_probe(trainer: Any) -> None:
    """Undo `import lightning`'s PYTORCH_NVML_BASED_CUDA_CHECK on CPU runs.

    With it set, every `torch.cuda.is_available()` (Adam calls it each step)
    loads NVML, for a GPU that the CPU accelerator never uses: a cost per
    step a small model feels (figures: bench/README.md).
    """
    from lightning.pytorch.accelerators import CPUAccelerator

    if isinstance(trainer.accelerator, CPUAccelerator):
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)


def best_checkpoint(trainer: Any) -> Path | None:
    callback = getattr(trainer, "checkpoint_callback", None)
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    return Path(path) if path and Path(path).is_file() else None


def _log_model(cfg: DictConfig, run: StepRun, model: Any, datamodule: TaskDataModule, result: TrainResult,
               trainer: Any) -> str | None:
    """The best weights as a pyfunc; a registry version when a name is configured."""
    import torch

    if result.best_checkpoint is not None:
        weights = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    else:
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    callback = getattr(trainer, "checkpoint_callback", None)
    monitor = getattr(callback, "monitor", None) or cfg.optimized_metric
    score = getattr(callback, "best_model_score", None)
    tags = {
        tag.RUN_ID: run.run_id,
        tag.DATA_DIGEST: result.dataset.manifest.digest,
        tag.DATA_URI: result.dataset.uri,
        tag.MONITOR: str(monitor),
        tag.MONITOR_VALUE: str(float(score) if score is not None else result.metrics.get(monitor)),
        tag.GIT_COMMIT: run.code.commit or "",
        tag.CODE_VERSION: run.code.id,
    }
    logged = log_trained_model(run, cfg.model, weights, datamodule.serving_spec(), tags,
                               register_as=cfg.registry.get("model_name") if cfg.registry.get("register") else None)
    if logged.version is not None:
        uri = f"models:/{logged.version.name}/{logged.version.version}"
        run.set_outputs({"model": logged.model_uri, "output": uri})
        return uri
    run.set_outputs({"model": logged.model_uri, "output": logged.model_uri})
    return None
