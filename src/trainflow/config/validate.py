"""Check `_target_` nodes against their callables before anything runs.

Data, model and callbacks are arbitrary `_target_` calls, so no static schema
can know their keys. Their signatures do: a misspelt key (`lrr`) or a value of
the wrong type for an annotated `int`/`float`/`bool` parameter fails here,
naming the config key, instead of inside `instantiate` mid-run.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from trainflow.config.static_targets import TargetNotFound, TargetSignature, read_target
from trainflow.errors import ConfigError

_HYDRA_KEYS = {"_target_", "_partial_", "_args_", "_recursive_", "_convert_"}
_SCALARS: dict[Any, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    bool: (bool,),
    str: (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
}


def check_targets(cfg: DictConfig, sections: tuple[str, ...] = ("data", "model", "callbacks"), *,
                  imported: bool = True) -> None:
    """Raise ConfigError for the first bad key under any `_target_` node.

    `imported=False` reads each target from its source file instead
    (trainflow.config.static_targets): the override precheck runs before
    every step and must not import torch for it. A target the source cannot
    decide is skipped there; the step's own check, which imports, judges it.
    """
    read = _imported if imported else _from_source
    for section in sections:
        node = cfg.get(section)
        if node is None:
            continue
        for path, target_node in _target_nodes(node, section):
            target = str(target_node._target_)
            found = read(path, target)
            if found is not None:
                _check_node(path, target, target_node, found)


def _target_nodes(node: Any, path: str) -> Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            yield from _target_nodes(node._get_node(key), path + "." + str(key))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            yield from _target_nodes(item, f"{path}[{i}]")


def _imported(path: str, target: str) -> TargetSignature | None:
    from hydra._internal.utils import _locate

    try:
        func = _locate(target)
    except ImportError as exc:
        raise ConfigError(f"{path}._target_: cannot import '{target}': {exc}") from exc
    try:
        sig = inspect.signature(func, eval_str=True)
    except (NameError, TypeError, ValueError):
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            return None
    check_config = getattr(func, "check_config", None)
    return TargetSignature(sig, check_config if callable(check_config) else None)


def _from_source(path: str, target: str) -> TargetSignature | None:
    try:
        return read_target(target)
    except TargetNotFound as exc:
        raise ConfigError(f"{path}._target_: cannot import '{target}': {exc}") from exc


def _check_node(path: str, target: str, node: DictConfig, found: TargetSignature) -> None:
    params = found.signature.parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key in node:
        key = str(key)
        if key in _HYDRA_KEYS:
            continue
        if key not in params:
            if takes_kwargs:
                continue
            allowed = ", ".join(k for k in params if k not in ("self", "args", "kwargs"))
            raise ConfigError(f"{path}.{key}: not a parameter of {target} (has: {allowed})")
        _check_type(path, key, node, params[key].annotation)
    # a target may know values no signature can express (a component that refuses hub downloads)
    if found.check_config is not None:
        found.check_config(path, node)


def _check_type(path: str, key: str, node: DictConfig, annotation: Any) -> None:
    judged = _accepted_scalars(annotation)
    if judged is None or OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key):
        return  # an interpolation may need Hydra's runtime; its value is checked where it is used
    value = node[key]
    if value is None or isinstance(value, DictConfig | ListConfig):  # None; a nested `_target_` or a list
        return
    accepted, names = judged
    if isinstance(value, accepted) and not (bool not in accepted and isinstance(value, bool)):
        return
    raise ConfigError(f"{path}.{key}: expected {names}, got {type(value).__name__} {value!r}")


def _accepted_scalars(annotation: Any) -> tuple[tuple[type, ...], str] | None:
    """The config scalars a parameter takes; None when the annotation cannot be judged.

    A union with a class no YAML value can be (Adam's `lr: float | Tensor`)
    still takes only its scalar members from a config file, so `lr=abc`
    fails here rather than inside the optimizer's first step.
    """
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = [a for a in typing.get_args(annotation) if a is not type(None)] if union else [annotation]
    accepted: tuple[type, ...] = ()
    names: list[str] = []
    for member in members:
        scalars = _SCALARS.get(member)
        if scalars is not None:
            accepted += scalars
            names.append(scalars[-1].__name__)
        elif (not isinstance(member, type) or member in (Any, object, list, dict, tuple)
              or typing.get_origin(member)):  # Any is a class from Python 3.11 on
            return None  # Any, a string annotation, a container or a generic: anything may fit
    return (accepted, " or ".join(names)) if accepted else None
