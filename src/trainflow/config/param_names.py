"""How a Hydra override is spelt as an `mlflow run -P` parameter, and back.

MLflow refuses parameter names that start with `+`, so Hydra's "add a key the
config lacks" (`+trainer.detect_anomaly=true`) cannot be a `-P` name. It is
spelt `-P add.trainer.detect_anomaly=true`: a leading `add.` stands for `+`.
Through `main`, `-P add.train.trainer.detect_anomaly=true` adds the key to
the train step only. No config has a top-level `add` key.
"""

from __future__ import annotations

ADD = "add."


def override_from_param(item: str) -> str:
    """`add.key=value` -> `+key=value`; any other override unchanged."""
    return "+" + item[len(ADD):] if item.startswith(ADD) else item


def param_name(key: str) -> str:
    """An override's key as an MLflow parameter name: `+key` -> `add.key` (MLflow refuses a leading `+`)."""
    return ADD + key[1:] if key.startswith("+") and not key.startswith("++") else key
