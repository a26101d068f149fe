"""Third-party warnings known to be harmless here, filtered by `extras.ignore_warnings` (on by default).

Each one was read, found to need no action from a user, and could not be
fixed at its source in trainflow. Filtering them (and only them) keeps the
warnings that do matter visible: a step printing twelve advisories trains
users to skip every warning. `extras.ignore_warnings=false` shows them all.
A row whose library stops emitting it filters nothing and costs nothing.
A row harmless only outside some setting names the environment variable
that marks it (`unless_env`): there it is shown.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

# Where a row's message comes from: Python's warnings module, or a named logger.
WARNINGS = "warnings"


@dataclass(frozen=True)
class KnownWarning:
    source: str  # WARNINGS or a logger name
    pattern: str  # regex searched in the message
    why: str
    unless_env: str | None = None  # set in the environment: the warning matters there, and is shown


KNOWN_HARMLESS = (
    KnownWarning("mlflow.pyfunc", r"serialized using CloudPickle",
                 "MLflow says this of every PythonModel instance; the pickled object is ours, loaded by its owner"),
    KnownWarning("mlflow.utils.environment", r"Failed to resolve installed pip version",
                 "a uv venv has no pip; the model's requirements come pinned from uv.lock, not from pip"),
    KnownWarning(WARNINGS, r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                 "inside Lightning 2.6's own pytree code against newer torch; nothing of ours calls it"),
    KnownWarning(WARNINGS, r"is smaller than the logging interval Trainer\(log_every_n_steps",
                 "trainflow logs metrics per epoch; log_every_n_steps only bounds per-step logging"),
    KnownWarning("lightning.pytorch.utilities.rank_zero", r"Tip: .*litlogger",
                 "an advertisement for a hosted logger, printed by every Trainer"),
    KnownWarning(WARNINGS, r"The `srun` command is available on your system but is not used",
                 "Lightning says it on every machine with SLURM's client tools installed; it matters only inside "
                 "a SLURM job (processes that srun should have started), where it is shown",
                 unless_env="SLURM_JOB_ID"),
)


class _DropKnown(logging.Filter):
    """Drops a logger's records that match a known pattern."""

    def __init__(self, patterns: list[re.Pattern[str]]) -> None:
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


def filter_known_warnings(known: tuple[KnownWarning, ...] = KNOWN_HARMLESS) -> None:
    """Hide exactly the rows of `known` (less those whose `unless_env` is set), for the rest of this process.

    Python warnings are dropped where they are shown, not by a
    `filterwarnings` rule: MLflow wraps some calls in
    `catch_warnings(); simplefilter("once")`, which outranks any rule set here.
    """
    by_logger: dict[str, list[re.Pattern[str]]] = {}
    for row in (r for r in known if not (r.unless_env and r.unless_env in os.environ)):
        by_logger.setdefault(row.source, []).append(re.compile(row.pattern))
    shown = by_logger.pop(WARNINGS, [])
    if shown and not getattr(warnings.showwarning, "drops_known", False):
        warnings.showwarning = _dropping(warnings.showwarning, shown)
    if shown:  # a step routes warnings through logging into its job log (`logging.captureWarnings`)
        by_logger["py.warnings"] = shown
    for name, patterns in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) for f in logger.filters):
            logger.addFilter(_DropKnown(patterns))


def _dropping(show: Callable[..., None], patterns: list[re.Pattern[str]]) -> Callable[..., None]:
    """`warnings.showwarning` that leaves out messages matching `patterns`."""

    def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    file: TextIO | None = None, line: str | None = None) -> None:
        if not any(p.search(str(message)) for p in patterns):
            show(message, category, filename, lineno, file, line)

    showwarning.drops_known = True  # type: ignore[attr-defined]
    return showwarning
