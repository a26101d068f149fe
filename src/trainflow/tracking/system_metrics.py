"""MLflow's system metrics (CPU, memory, disk, network; GPU where nvidia-ml-py finds one) on a run.

A train run's curves say how it learned; these say what it cost and whether
the machine was the bottleneck (a data loader starving a GPU, memory
creeping up). MLflow's own monitor samples them in a thread and logs them
as `system/*` metrics of the run it is given.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from trainflow.tracking.run import StepRun


@contextmanager
def system_metrics(run: StepRun, tracking: DictConfig) -> Iterator[None]:
    """Sample while the block runs, when `tracking.system_metrics` is on; only the run's leader rank logs."""
    if not tracking.get("system_metrics") or not run.leader:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # its start/stop/"no GPU" notes are INFO lines on every train step; its warnings still show
    logging.getLogger("mlflow.system_metrics.system_metrics_monitor").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(run.run_id, sampling_interval=float(tracking.system_metrics_interval_s),
                                   tracking_uri=run.tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
