"""The one line a step prints when it ends: what it handed on, and where its run is.

A user scrolling a pipeline's console wants, per step, the URI to pass on and
a link to open; everything else is in the run.
"""

from __future__ import annotations

from collections.abc import Mapping


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page on a server; on an embedded store, the run and the store `mlflow ui` must be pointed at."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{run_id} in {tracking_uri}"


def step_summary(step: str, outputs: Mapping[str, str], link: str, seconds: float | None) -> str:
    """`train output: models:/digits-classifier/3 · run http://…/runs/ab12 · 41 s`."""
    output = outputs.get("output", "none")
    took = f" · {seconds:.0f} s" if seconds is not None else ""
    return f"{step} output: {output} · run {link}{took}"
