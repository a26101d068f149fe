"""The evaluate step: test a checkpoint in a run of its own."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from trainflow.config.validate import check_targets
from trainflow.errors import ConfigError
from trainflow.tracking.lightning import RunLogger
from trainflow.tracking.run import StepRun
from trainflow.training.checkpoints import resolve_checkpoint
from trainflow.training.train import _scalars

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    checkpoint: Path


def evaluate(cfg: DictConfig, run: StepRun) -> EvalResult:
    import lightning as L

    if not cfg.get("ckpt_path"):
        raise ConfigError("ckpt_path: required (a .ckpt path or runs:/<run_id>/checkpoints/best)")
    check_targets(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    checkpoint = resolve_checkpoint(cfg.ckpt_path, run.output_dir / "checkpoint")
    run.client.set_tag(run.run_id, "trainflow.checkpoint", cfg.ckpt_path)

    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    logger = RunLogger(run.client, run.run_id, cfg.tracking.flush_every_s, log_checkpoints=False)
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=[])
    try:
        trainer.test(model=model, datamodule=datamodule, ckpt_path=str(checkpoint), weights_only=True)
    finally:
        logger.close()
    return EvalResult(metrics=_scalars(trainer.callback_metrics), checkpoint=checkpoint)
