"""The prepare_data step: a data source becomes a versioned dataset artifact."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from trainflow.config.validate import check_targets
from trainflow.data.dataset import Manifest
from trainflow.data.dataset_cache import build_dataset
from trainflow.data.task import task_data_module
from trainflow.tracking.datasets import log_dataset_input, upload_dataset
from trainflow.tracking.run import StepRun

log = logging.getLogger(__name__)

DATASET_ARTIFACT = "dataset"


@dataclass
class PrepareResult:
    uri: str
    manifest: Manifest
    local_path: Path


def prepare_data(cfg: DictConfig, run: StepRun) -> PrepareResult:
    """Build the splits into the cache (streamed, hashed as written), then log them; the URI comes last.

    The output tag is set only after every file is uploaded, so a failed
    upload never leaves a FINISHED run that claims a dataset. The upload's
    URI is remembered in the cache, so a train step on this machine (inside
    `main`, say) reads the files prepare_data just wrote instead of
    downloading them again.
    """
    check_targets(cfg, sections=("data",))
    datamodule = task_data_module(instantiate(cfg.data, _convert_="all"), cfg.data._target_)
    cache_root = Path(cfg.paths.cache_dir) / "datasets"
    fetched = build_dataset(datamodule, cache_root)
    fetched.uri = upload_dataset(run, fetched, DATASET_ARTIFACT, cache_root)
    log_dataset_input(run.client, run.run_id, fetched, "prepared")
    run.log_metrics({f"data/{split}_rows": rows for split, rows in fetched.manifest.splits.items()})
    run.set_output(fetched.uri)
    log.info("dataset %s (digest %s) at %s", fetched.manifest.task, fetched.manifest.digest[:12], fetched.uri)
    return PrepareResult(fetched.uri, fetched.manifest, fetched.path)
