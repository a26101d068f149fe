"""Which process of a distributed job this is, and what it may write.

Under DDP Lightning re-runs the step script once per extra rank. Only rank
zero owns the MLflow run; the others must see the same run id (to read what
they need) and write nothing: no second run, no duplicate params, artifacts
or registry versions.
"""

from __future__ import annotations

import os
from typing import Any

LEADER_RUN_ENV = "TRAINFLOW_RUN_ID"
_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
_WRITES = ("log_", "set_", "create_", "delete_", "update_", "register", "rename_", "transition_", "copy_")


def process_rank() -> int:
    """0 on the leader; the first non-zero rank variable otherwise."""
    for var in _RANK_VARS:
        value = os.environ.get(var)
        if value and value.isdigit() and int(value) != 0:
            return int(value)
    return 0


def is_follower() -> bool:
    return process_rank() != 0 and bool(os.environ.get(LEADER_RUN_ENV))


class ReadOnlyClient:
    """An MlflowClient that reads and drops writes, for non-zero ranks.

    Rank-zero-only writes are what Lightning does for its own loggers; this
    applies the same rule to everything a step writes through its client.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        if name.startswith(_WRITES):
            return lambda *args, **kwargs: None
        return getattr(self._client, name)
