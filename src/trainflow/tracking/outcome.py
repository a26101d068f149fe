"""What an exception out of a step means: the run's status, the reason recorded, and how the process exits.

Decided here once, for every step:

| what came out                          | run      | recorded on the run         | process                  |
|----------------------------------------|----------|-----------------------------|--------------------------|
| `sys.exit(0)`                          | FINISHED | nothing                     | exits 0 (as it asked)    |
| `sys.exit(n)`                          | FAILED   | `exited with status n`      | exits n (as it asked)    |
| SIGINT/SIGTERM (KeyboardInterrupt)     | KILLED   | `interrupted by SIGTERM`    | `error:` line, 128+sig   |
| any error once SIGINT/SIGTERM came     | KILLED   | the same, error.txt its     | `error:` line, 128+sig   |
|   (it replaced the KeyboardInterrupt)  |          |   traceback                 |                          |
| a TrainflowError (also inside Hydra's  | FAILED   | its message                 | `error:` line, exit 1    |
|   instantiate): a fix the user can make|          |                             |                          |
| anything else (a bug)                  | FAILED   | type, message, error.txt    | the traceback propagates |

A KeyboardInterrupt can reach a step as another exception: a `finally` or
`__exit__` it unwinds through may fail on the state it left half-changed, and
Python keeps the newer error. The step was still stopped, not wrong: a sweep
queues its trial again.
"""

from __future__ import annotations

import signal
import traceback
from dataclasses import dataclass

from trainflow.errors import TrainflowError
from trainflow.tracking.signals import exit_status, interruption


@dataclass(frozen=True)
class Outcome:
    """How a step ended."""

    status: str  # FINISHED | FAILED | KILLED
    reason: str | None = None  # the run's `trainflow.error` tag
    trace: str | None = None  # the run's error.txt
    line: str | None = None  # printed as `error: <line>` on stderr
    exit_code: int | None = None  # None: the exception propagates as it is


def outcome_of(exc: BaseException, step: str, run_id: str) -> Outcome:
    """The status an exception out of step `step` (in run `run_id`) means, and what is said about it."""
    signum = interruption()
    if isinstance(exc, SystemExit) and signum is None:  # sys.exit(n) inside a step: its own status
        return Outcome("FAILED", f"exited with status {exc.code}") if exc.code else Outcome("FINISHED")
    stopped = isinstance(exc, KeyboardInterrupt | SystemExit)
    if stopped or signum is not None:
        name = signal.Signals(signum or signal.SIGINT).name
        replaced = None if stopped else traceback.format_exc()  # the error that took the interrupt's place
        return Outcome("KILLED", f"interrupted by {name}", replaced, line=interrupted_line(step, name, run_id),
                       exit_code=exit_status())
    user_error = user_error_of(exc)
    if user_error is not None:
        return Outcome("FAILED", str(user_error), line=str(user_error), exit_code=1)
    return Outcome("FAILED", f"{type(exc).__name__}: {exc}", traceback.format_exc())


def interrupted_line(step: str, signal_name: str, run_id: str | None) -> str:
    ended = f"; run {run_id} KILLED" if run_id else "; no run was made"
    return f"{step} interrupted by {signal_name}{ended}"


def user_error_of(exc: BaseException) -> TrainflowError | None:
    """A TrainflowError, or the one behind Hydra's InstantiationException (a check in a data or model constructor)."""
    if isinstance(exc, TrainflowError):
        return exc
    from hydra.errors import InstantiationException

    cause = exc.__cause__ if isinstance(exc, InstantiationException) else None
    while isinstance(cause, InstantiationException):  # nested nodes (model.net) wrap once per level
        cause = cause.__cause__
    return cause if isinstance(cause, TrainflowError) else None
