"""A stable identity for a resolved config."""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Keys that differ between two runs of the same work: where output goes and
# how the run is named, not what is computed.
VOLATILE_KEYS = frozenset({"paths", "hydra", "extras", "tracking"})


def config_hash(resolved: dict[str, Any], ignore: frozenset[str] = VOLATILE_KEYS) -> str:
    """sha256 of the canonical JSON of the config without run-local keys.

    Canonical JSON keeps 3 and "3" apart and key order irrelevant, which
    comparing MLflow's stringified params cannot.
    """
    payload = {k: v for k, v in resolved.items() if k not in ignore}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
