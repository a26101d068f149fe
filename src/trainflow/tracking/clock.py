"""How long a step has been running: `time/startup_s` and the summary line's duration.

A step process's age (read from /proc) counts its imports, which is what a
user waits for; a step that main runs inside its own process
(pipeline.in_process) starts when main starts it, so `step_clock` marks that.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager


def process_age_s() -> float | None:
    """Seconds since this process started (Linux), imports included."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started = int(stat.read().rsplit(")", 1)[1].split()[19]) / ticks
            return float(uptime.read().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


class _StepClock:
    """When the step started, for a step run inside another step's process; None: at the process start."""

    started: float | None = None


@contextmanager
def step_clock() -> Iterator[None]:
    """`time/startup_s` and the summary's duration count from here, not from the process start."""
    previous, _StepClock.started = _StepClock.started, time.time()
    try:
        yield
    finally:
        _StepClock.started = previous


def step_age_s() -> float | None:
    """Seconds since this step started: since `step_clock` when one is open, else the process age."""
    if _StepClock.started is not None:
        return time.time() - _StepClock.started
    return process_age_s()
