"""Secrets never reach params, tags or config artifacts."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"
# Whole words of a key (`db_password`, `MLFLOW_TRACKING_TOKEN`, `api-key`), so
# `max_tokens` or `sort_keys` stay readable.
_SECRET_WORDS = frozenset({"password", "passwd", "pwd", "token", "secret", "credential", "credentials",
                           "apikey", "key"})
_WORD_SPLIT = re.compile(r"[_\-.\s]+")
# The password of a URL's user info (`postgresql://user:pw@host/db`), under any key:
# a study storage or a database URL is not named like a secret but may carry one.
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]*:)[^@\s/]+(@)")


def is_secret_key(key: str) -> bool:
    words = [w.lower() for w in _WORD_SPLIT.split(key.rsplit(".", 1)[-1]) if w]
    return any(w in _SECRET_WORDS for w in words)


def mask_url_passwords(text: str) -> str:
    return _URL_PASSWORD.sub(rf"\g<1>{REDACTED}\g<2>", text)


def redact(node: Any) -> Any:
    """A copy of a plain container with every secret-looking value replaced."""
    if isinstance(node, dict):
        return {k: (REDACTED if is_secret_key(str(k)) and v is not None else redact(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [redact(v) for v in node]
    if isinstance(node, str):
        return mask_url_passwords(node)
    return node
