"""A trial's whole console output into a file, which is logged with its run.

A sweep prints one line per trial; everything the trial itself prints (its
config tree, Lightning's model summary and messages, warnings, a traceback)
goes to `trial.log` in the trial's output folder, and from there to its run,
where the UI shows it even when the trial ran on another machine.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """File descriptors 1 and 2 point at `path` for the block: Python, C libraries and child processes alike.

    Redirecting the descriptors rather than `sys.stdout` also catches the
    logging handlers and libraries that hold on to the original streams.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
