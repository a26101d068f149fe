"""Hydra's job log (`<task>.log` in a step's output dir) onto the step's run, warnings included.

A run that failed on another machine (a SLURM node, a CI runner) can then be
read in the UI: what the step logged, Lightning's and MLflow's warnings too,
not only the one-line error on the run.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def job_log(output_dir: Path) -> Path | None:
    """The file Hydra's job logging writes in this step's output dir; None outside Hydra's runner.

    Only this step's own: a sweep's trials share their sweep's process and
    log, which stays with the sweep's run.
    """
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            path = Path(handler.baseFilename)
            if path.parent == output_dir.resolve():
                return path
    return None


@contextmanager
def warnings_logged(path: Path | None) -> Iterator[None]:
    """Python warnings go through logging (so into the job log as well) while a job log exists.

    `logging.captureWarnings` is logging's own switch for it;
    `catch_warnings` puts back the `showwarning` found, also for a step
    nested in another step's process.
    """
    if path is None:
        yield
        return
    with warnings.catch_warnings():
        logging.captureWarnings(True)
        try:
            yield
        finally:
            logging.captureWarnings(False)


def log_job_log(client: Any, run_id: str, output_dir: Path) -> None:
    """The job log as it is now, as an artifact of the run: called at the run's end, whatever its status."""
    path = job_log(output_dir)
    if path is None or not path.is_file():
        return
    for handler in logging.getLogger().handlers:
        handler.flush()
    try:
        client.log_artifact(run_id, str(path))
    except Exception as exc:
        log.warning("could not log %s on run %s: %s", path.name, run_id, exc)
