"""The train step: data -> model -> callbacks -> trainer -> fit -> test."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from trainflow.config.validate import check_targets
from trainflow.tracking.lightning import RunLogger
from trainflow.tracking.run import StepRun
from trainflow.training.checkpoints import resolve_checkpoint
from trainflow.training.instantiate import instantiate_callbacks

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    metrics: dict[str, float]
    monitored: float | None
    best_checkpoint: Path | None
    checkpoint_artifacts: dict[str, str] = field(default_factory=dict)


def train(cfg: DictConfig, run: StepRun) -> TrainResult:
    import lightning as L

    check_targets(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    datamodule = instantiate(cfg.data, _convert_="all")
    log.info("Instantiating model <%s>", cfg.model._target_)
    model = instantiate(cfg.model, _convert_="all")
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    logger = RunLogger(run.client, run.run_id, cfg.tracking.flush_every_s, cfg.tracking.log_checkpoints)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)

    try:
        if cfg.get("train"):
            resume = resolve_checkpoint(cfg.ckpt_path, run.output_dir / "resume") if cfg.get("ckpt_path") else None
            trainer.fit(model=model, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        metrics = _scalars(trainer.callback_metrics)

        best: Path | None = None
        if cfg.get("test"):
            best = _best_checkpoint(trainer)
            if best is None:
                log.warning("No best checkpoint found: testing with the current weights")
            trainer.test(model=model, datamodule=datamodule, ckpt_path=str(best) if best else None,
                         weights_only=True)
            metrics.update(_scalars(trainer.callback_metrics))
    finally:
        if trainer.is_global_zero:
            logger.close()

    monitored = metrics.get(cfg.optimized_metric) if cfg.get("optimized_metric") else None
    return TrainResult(metrics=metrics, monitored=monitored, best_checkpoint=_best_checkpoint(trainer),
                       checkpoint_artifacts=dict(logger.logged_checkpoints))


def _best_checkpoint(trainer: object) -> Path | None:
    callback = getattr(trainer, "checkpoint_callback", None)
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    return Path(path) if path and Path(path).is_file() else None


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
