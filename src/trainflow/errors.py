"""Errors a user can fix, each carrying the one line that names the culprit.

Steps print `error: <message>` for these and exit non-zero; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class TrainflowError(Exception):
    """A failure whose message alone tells the user what to change."""


class ConfigError(TrainflowError):
    """A config key is misspelt, mistyped or inconsistent."""


class TrackingError(TrainflowError):
    """The tracking server or store cannot be used (unreachable, refused)."""


class UriError(TrainflowError):
    """An MLflow or local URI names something that does not exist."""


class DataError(TrainflowError):
    """Input data is missing, malformed or does not match its manifest."""


def first_line(exc: BaseException) -> str:
    """An exception as one line, for an `error:` message: its message's first line, or its type when it has none."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
