"""Headline figures on parent runs, so the runs table compares them without expanding anything.

A pipeline or sweep parent used to carry no metrics: every column read `-`
and a user hunted through children for the one number that mattered. The
parent now repeats the test metrics of the run that stands for it (the
pipeline's evaluate run, the sweep's best trial), and names that run in a tag.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainflow.tracking import tags as tag
from trainflow.tracking.metrics import metric_entities

HEADLINE_PREFIX = "test/"


def log_headline(client: Any, run_id: str, source_run_id: str, source_metrics: Mapping[str, float] | None = None,
                 tags: Mapping[str, str] | None = None) -> dict[str, float]:
    """Copy `source_run_id`'s test metrics onto `run_id`; returns what was copied.

    `source_metrics`: the source run's metrics, when the caller holds the
    finished run already (no second fetch). `tags`: more of `run_id`'s tags,
    written in the same request.
    """
    from mlflow.entities import RunTag

    if source_metrics is None:
        source_metrics = client.get_run(source_run_id).data.metrics
    metrics = {k: v for k, v in source_metrics.items() if k.startswith(HEADLINE_PREFIX)}
    client.log_batch(run_id, metrics=metric_entities(dict(sorted(metrics.items()))),
                     tags=[*(RunTag(k, v) for k, v in (tags or {}).items()), RunTag(tag.HEADLINE_RUN, source_run_id)])
    return metrics


def log_best_trial_headline(client: Any, sweep_run_id: str, best_run_id: str | None) -> dict[str, float]:
    """The sweep parent shows its best trial's test metrics (a trial without a run: nothing)."""
    return log_headline(client, sweep_run_id, best_run_id) if best_run_id else {}
