"""The prepare_data step: a data source becomes a versioned dataset artifact."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from trainflow.config.validate import check_targets
from trainflow.data.dataset import Manifest, staging_dir, store_in_cache
from trainflow.data.task import task_data_module
from trainflow.tracking.datasets import FetchedDataset, log_dataset_input
from trainflow.tracking.run import StepRun

log = logging.getLogger(__name__)

DATASET_ARTIFACT = "dataset"


@dataclass
class PrepareResult:
    uri: str
    manifest: Manifest
    local_path: Path


def prepare_data(cfg: DictConfig, run: StepRun) -> PrepareResult:
    """Build the splits locally, verify them, then log them; the URI comes last.

    The output tag is set only after every file is uploaded, so a failed
    upload never leaves a FINISHED run that claims a dataset.
    """
    check_targets(cfg, sections=("data",))
    datamodule = task_data_module(instantiate(cfg.data, _convert_="all"), cfg.data._target_)
    cache_root = Path(cfg.paths.cache_dir) / "datasets"
    staging = staging_dir(cache_root)
    try:
        datamodule.build_dataset(staging)
        local = store_in_cache(staging, cache_root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    run.client.log_artifacts(run.run_id, str(local), DATASET_ARTIFACT)
    uri = run.artifact_uri(DATASET_ARTIFACT)
    fetched = FetchedDataset(uri, local, _manifest(local), 0, None)
    log_dataset_input(run.client, run.run_id, fetched, "prepared")
    run.log_metrics({f"data/{split}_rows": rows for split, rows in fetched.manifest.splits.items()})
    run.set_output(uri)
    log.info("dataset %s (digest %s) at %s", fetched.manifest.task, fetched.manifest.digest[:12], uri)
    return PrepareResult(uri, fetched.manifest, local)


def _manifest(folder: Path) -> Manifest:
    from trainflow.data.dataset import verify_dataset

    return verify_dataset(folder)
