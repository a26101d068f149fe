"""Secrets never reach params, tags or config artifacts."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"
_SECRET_KEY = re.compile(r"(password|passwd|token|secret|credential|api[_-]?key|(^|[_.-])key$)", re.I)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key.rsplit(".", 1)[-1]))


def redact(node: Any) -> Any:
    """A copy of a plain container with every secret-looking value replaced."""
    if isinstance(node, dict):
        return {k: (REDACTED if is_secret_key(str(k)) and v is not None else redact(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [redact(v) for v in node]
    return node
