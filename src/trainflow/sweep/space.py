"""The search space of `sweep.params`: config keys -> Optuna distributions.

A trial's sampled values become ordinary Hydra overrides (`key=value`), so a
trial run is exactly the train run its logged overrides rebuild.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainflow.errors import ConfigError

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class SearchParam:
    key: str  # the override key as written (`model.optimizer.lr`, or `+trainer.x` to add one)
    type: str
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def name(self) -> str:
        """The Optuna parameter name: the config key without Hydra's `+`."""
        return self.key.lstrip("+")


def _suggest_float(trial: optuna.Trial, p: SearchParam) -> Any:
    return trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)


def _suggest_int(trial: optuna.Trial, p: SearchParam) -> Any:
    return trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)


def _suggest_categorical(trial: optuna.Trial, p: SearchParam) -> Any:
    return trial.suggest_categorical(p.name, list(p.choices))


# One row per `type`: how Optuna samples it.
SUGGEST: dict[str, Callable[[optuna.Trial, SearchParam], Any]] = {
    "float": _suggest_float,
    "int": _suggest_int,
    "categorical": _suggest_categorical,
}


def search_space(params: Mapping[str, Any]) -> list[SearchParam]:
    """Parse and check `sweep.params`; a bad entry fails naming its key."""
    space = []
    for key, node in params.items():
        spec = dict(node)
        param = SearchParam(key=str(key), type=str(spec.get("type")), low=spec.get("low"), high=spec.get("high"),
                            step=spec.get("step"), log=bool(spec.get("log")),
                            choices=tuple(spec.get("choices") or ()))
        check_param(param)
        space.append(param)
    if not space:
        raise ConfigError("sweep.params: empty; name at least one config key to search")
    return space


def check_param(p: SearchParam) -> None:
    where = f"sweep.params.{p.key}"
    if p.type not in SUGGEST:
        raise ConfigError(f"{where}.type: '{p.type}' is not one of {', '.join(SUGGEST)}")
    if p.type == "categorical":
        if not p.choices:
            raise ConfigError(f"{where}.choices: a categorical parameter needs choices")
        bad = [c for c in p.choices if c is not None and not isinstance(c, bool | int | float | str)]
        if bad:
            raise ConfigError(f"{where}.choices: Optuna takes only null, bool, int, float, str (got {bad[0]!r})")
        return
    if p.low is None or p.high is None or not float(p.low) < float(p.high):
        raise ConfigError(f"{where}: needs low < high (got low={p.low}, high={p.high})")
    if p.log and float(p.low) <= 0:
        raise ConfigError(f"{where}.low: a log scale needs low > 0")
    # Optuna refuses both only when sampling, which would fail every trial
    if p.log and p.step is not None and (p.type == "float" or int(p.step) != 1):
        raise ConfigError(f"{where}: step and log cannot be combined (an int on a log scale takes step 1)")


def suggest(trial: optuna.Trial, space: list[SearchParam]) -> dict[str, Any]:
    """Sample every dimension; keys are the override keys."""
    return {p.key: SUGGEST[p.type](trial, p) for p in space}


def first_values(space: list[SearchParam]) -> dict[str, Any]:
    """A point of the space without sampling: composing it checks every key before a study exists."""
    return {p.key: (p.choices[0] if p.type == "categorical" else p.low) for p in space}


def as_override(key: str, value: Any) -> str:
    """`key=value` in Hydra's grammar, typed as sampled (strings quoted, so `'32'` stays a string)."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, int | float):
        text = repr(value)
    else:
        escaped = str(value).replace("\\", "\\\\").replace("'", "\\'")
        text = f"'{escaped}'"
    return f"{key}={text}"
