"""Leaving a process without the interpreter's teardown.

When a step's run has ended (status, artifacts, the logger's queue) or a
sweep worker has told the study, nothing is left to do, yet finalising
torch, Lightning, MLflow and SQLAlchemy modules at interpreter exit still
costs seconds: a pipeline paid it once per step, a sweep once per worker.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """Run the exit handlers, flush logging and the standard streams, then exit with `code` at once."""
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def status_of(exc: SystemExit) -> int:
    """The exit status `exc` gives a process, its message printed as Python prints it (status 1)."""
    if isinstance(exc.code, str):
        print(exc.code, file=sys.stderr, flush=True)
        return 1
    return int(exc.code or 0)
