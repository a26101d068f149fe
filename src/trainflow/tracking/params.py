"""The resolved config as MLflow params, safe under `mlflow run`."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from trainflow.config.redact import REDACTED, is_secret_key
from trainflow.errors import ConfigError

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


def new_params(flat: Mapping[str, str], logged: Mapping[str, str], may_differ: Iterable[str] = ()) -> dict[str, str]:
    """Params not yet on the run; one already there with another value is a ConfigError naming both.

    MLflow params cannot change: skipping a key whose value changed would
    leave the run describing a config it did not run. `mlflow run` logs each
    `-P` value as it was typed (`'1'`, `[a,b]`), so a logged value that Hydra's
    override parser reads as the resolved one is the same value. `may_differ`:
    keys whose new value does not change what is computed (a resumed run's
    own output folder).
    """
    skip = set(may_differ)
    for key, value in flat.items():
        if key in logged and key not in skip and not same_value(key, logged[key], value):
            shown = (REDACTED, REDACTED) if is_secret_key(key) else (logged[key], value)
            raise ConfigError(f"param {key}: the run already has {key}={shown[0]!r}, this step has "
                              f"{key}={shown[1]!r}; MLflow params cannot change: use a new run")
    return {k: v for k, v in flat.items() if k not in logged}


def same_value(key: str, logged: str, resolved: str) -> bool:
    """`logged` (as typed, maybe shell-quoted) names the same value as `resolved` (as `flatten` writes it).

    `mlflow run` logs a `-P` value `shlex.quote`d (`'[a,'"'"'b c'"'"']'`):
    unquoted, it is the Hydra override value the step was given. A number
    the config's schema widened (`-P x=0` into a float key resolves to
    `0.0`) is the same number.
    """
    typed = [logged]
    try:
        words = shlex.split(logged)
    except ValueError:  # not shell syntax: only the text itself
        words = []
    if len(words) == 1:
        typed.append(words[0])
    read = [_override_text(key, value) for value in typed]
    if resolved in typed or resolved in read:
        return True
    number = _as_number(resolved)
    return number is not None and any(_as_number(text) == number for text in [*typed, *read] if text is not None)


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _override_text(key: str, value: str) -> str | None:
    """`value` as Hydra reads it in `key=value`, written as `flatten` writes params; None when it does not parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return _param_text(OverridesParser.create().parse_override(f"{key}={value}").value())
    except HydraException:
        return None
