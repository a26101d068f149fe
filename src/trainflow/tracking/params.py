"""The resolved config as MLflow params, safe under `mlflow run`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# MLflow 3 stores param values up to 6000 characters; longer values are cut
# here (the full config is the config.yaml artifact).
MAX_PARAM_VALUE = 6000


def flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys to strings, the way users write `-P key=value` overrides.

    Lists stay one value (`tags=["a", "b"]`), so a key never splits into
    `tags.0`, `tags.1` that no override could name.
    """
    flat: dict[str, str] = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = _param_text(value)
    return flat


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, bool | int | float):
        text = str(value)
    else:
        text = json.dumps(value, default=str)
    return text[:MAX_PARAM_VALUE]


def new_params(flat: Mapping[str, str], logged: Mapping[str, str]) -> dict[str, str]:
    """Params not yet on the run.

    `mlflow run` logs each `-P` value as it was typed (shell-quoted for
    declared ones); logging the same key again with the resolved value would
    raise "Changing param values is not allowed". The typed value stays, the
    resolved one is in config.yaml.
    """
    return {k: v for k, v in flat.items() if k not in logged}
