"""Figures measured once, as MLflow metric entities: many of them go in one `log_batch` request."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


def metric_entities(values: Mapping[str, float], model_id: str | None = None, dataset_name: str | None = None,
                    dataset_digest: str | None = None) -> list[Any]:
    """Figures measured once (step 0, one timestamp) as entities for one `log_batch` request.

    `model_id` and the dataset link them to a logged model, as `log_metric` would one at a time.
    """
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0, model_id=model_id, dataset_name=dataset_name, dataset_digest=dataset_digest)
            for k, v in values.items()]
