"""Hydra instantiation of the keyed callback mapping."""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def instantiate_callbacks(cfg: DictConfig | None) -> list[Any]:
    """Callbacks keyed by name; a key set to null (`callbacks.x=null`) is off."""
    if not cfg:
        return []
    callbacks = []
    for name, node in cfg.items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            # partial entries (only `monitor:` overrides) of a removed callback
            log.debug("callbacks.%s has no _target_; skipped", name)
            continue
        callbacks.append(instantiate(node))
    return callbacks
