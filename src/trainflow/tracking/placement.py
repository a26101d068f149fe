"""Which run a step logs into: the one `mlflow run` made, a resumed one, a new (maybe nested) one, or rank zero's.

| the step was started                                | its run                                       |
|-----------------------------------------------------|-----------------------------------------------|
| by `mlflow run`, `mlflow.projects.run`, the pipeline, | that run (`MLFLOW_RUN_ID`), attached; refused |
|   reproduce, or a user handing over a run id        |   when it already ran a step (see below)      |
| with `resume=<run id>`                              | that train run, reopened in place             |
| by a sweep for a trial (`parent_run_id`)            | a new run nested under the sweep's            |
| by hand (`python steps/train.py`)                   | a new run (nested when one is active)         |
| as a non-zero DDP rank                              | rank zero's run, read-only                    |

A run that already ran a step (it has `trainflow.step`, or it ended) is
continued only through `resume=`: MLflow params cannot change, so training
into it again would mix two configs' metrics under the first one's params.

The run's name: the user's wins (`tracking.run_name`, `mlflow run
--run-name`, a run they created and named); trainflow's derived name
(`run_name.run_name`) goes only where the run has none or MLflow's random
one (`run_name.is_generated_name`), and is always on the run as the
`trainflow.run_name` tag.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from trainflow.errors import TrackingError, TrainflowError, first_line
from trainflow.tracking import tags as tag
from trainflow.tracking.clock import process_age_s
from trainflow.tracking.params import new_params
from trainflow.tracking.ranks import LEADER_RUN_ENV, ReadOnlyClient, find_leader_run, job_key
from trainflow.tracking.run_name import is_generated_name
from trainflow.tracking.uri import resolve_tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient

# Run statuses that mean a step has been and gone.
ENDED = ("FINISHED", "FAILED", "KILLED")


@dataclass
class PlacedRun:
    """The run a step logs into, and what was already on it."""

    run_id: str
    experiment_id: str
    client: MlflowClient
    attached: bool  # True when `mlflow run` (or a parent) created the run
    params: dict[str, str]  # the params already on the run: never logged again with another value
    new_params: dict[str, str]  # the step's params that are not on the run yet
    leader: bool = True  # False on non-zero DDP ranks: they write nothing


def place_run(mlflow: Any, step: str, cfg: DictConfig, root: Path, uri: str, derived_name: str,
              parent_run_id: str | None, params: Mapping[str, str], may_differ: Sequence[str] = ()) -> PlacedRun:
    """Attach, resume or start the step's run (the table above); a TrainflowError names why none could be had.

    `params`: what the step will log. A run that already holds one of them
    with another value is refused before it is touched (`may_differ`: keys
    exempt, a resumed run's own folders).

    DDP ranks that Lightning starts later inherit the environment: the run id
    set here is how they follow the run.
    """
    run, attached = attach_or_start(mlflow, cfg, step, root, uri, derived_name, parent_run_id,
                                    lambda logged: new_params(params, logged, may_differ))
    os.environ[LEADER_RUN_ENV] = run.info.run_id
    logged = dict(run.data.params)
    return PlacedRun(run_id=run.info.run_id, experiment_id=run.info.experiment_id, client=mlflow.MlflowClient(uri),
                     attached=attached, params=logged, new_params={k: v for k, v in params.items() if k not in logged})


def attach_or_start(mlflow: Any, cfg: DictConfig, step: str, root: Path, uri: str, derived_name: str,
                    parent_run_id: str | None = None,
                    check_params: Callable[[dict[str, str]], object] = lambda logged: None) -> tuple[Any, bool]:
    """`mlflow run` made a run for us (MLFLOW_RUN_ID): use it, never a second one.

    `check_params` sees the params on a run before it is reopened, and raises to refuse it.
    """
    configured = cfg.tracking.get("run_name") or None
    if parent_run_id:
        # a new child: MLflow's start_run would attach to MLFLOW_RUN_ID (the parent's, under `mlflow run`)
        os.environ.pop("MLFLOW_RUN_ID", None)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    try:
        if cfg.get("resume"):
            return _reopen(mlflow, str(cfg.resume), run_id, check_params), True
        if run_id:  # nested when main runs this step in its own process (pipeline.in_process)
            existing = _continuable(mlflow.MlflowClient(uri), run_id)
            check_params(dict(existing.data.params))
            keep = existing.info.run_name and not is_generated_name(existing.info.run_name)
            # the name travels with the status update start_run makes anyway: no request of its own
            name = configured or (None if keep else derived_name)
            return mlflow.start_run(run_id=run_id, run_name=name, nested=mlflow.active_run() is not None), True
        experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or _experiment_id(
            mlflow, cfg.tracking.experiment_name, root, uri)
        nested = mlflow.active_run() is not None
        run = mlflow.start_run(experiment_id=experiment_id, run_name=configured or derived_name, nested=nested,
                               parent_run_id=parent_run_id)
        return run, nested or parent_run_id is not None
    except TrainflowError:
        raise
    except Exception as exc:
        where = f"run {run_id}" if run_id else f"experiment '{cfg.tracking.experiment_name}'"
        raise TrackingError(f"tracking store {uri}: cannot open {where}: {first_line(exc)}") from exc


def _continuable(client: MlflowClient, run_id: str) -> Any:
    """The run handed over by id, unless a step already ran in it: then only `resume=` may continue it."""
    run = client.get_run(run_id)
    ran = run.data.tags.get(tag.STEP)
    if ran or run.info.status in ENDED:
        what = f"already ran step {ran}" if ran else "already ran"
        raise TrackingError(
            f"run {run_id} {what} ({run.info.status}): MLflow params cannot change, so a second step would mix "
            f"two configs in one run; to continue an interrupted train run with the same config pass "
            f"resume={run_id}, otherwise start a new run (no --run-id / MLFLOW_RUN_ID)")
    return run


def _reopen(mlflow: Any, resume: str, created: str | None, check_params: Callable[[dict[str, str]], object]) -> Any:
    """Continue an interrupted run in place.

    `mlflow run -P resume=...` has already made a fresh run; it is closed at
    once, tagged with where the work went, so the resumed run stays the one
    run that holds the whole training history.
    """
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        previous = client.get_run(resume)
    except MlflowException as exc:
        raise TrackingError(f"resume: no run {resume}") from exc
    if previous.data.tags.get(tag.STEP) != "train":
        raise TrackingError(f"resume: run {resume} is not a train run")
    if previous.info.status == "FINISHED":
        raise TrackingError(f"resume: run {resume} finished; nothing to resume")
    check_params(dict(previous.data.params))
    if created and created != resume:
        client.set_tag(created, tag.RESUMED_INTO, resume)
        client.set_terminated(created, "FINISHED")
    os.environ.pop("MLFLOW_RUN_ID", None)
    run = mlflow.start_run(run_id=resume)
    count = int(previous.data.tags.get(tag.RESUMES, "0")) + 1
    client.set_tag(resume, tag.RESUMES, str(count))
    client.delete_tag(resume, tag.ERROR) if tag.ERROR in previous.data.tags else None
    return run


def _experiment_id(mlflow: Any, name: str, root: Path, uri: str) -> str:
    """Create the experiment with artifacts beside the embedded store.

    A sqlite store otherwise puts artifacts in `./mlruns` of whatever cwd
    created the experiment; servers choose their own artifact root.
    """
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    location = _artifacts_beside(uri, root)
    try:
        return str(mlflow.create_experiment(name, artifact_location=location))
    except Exception:
        existing = mlflow.get_experiment_by_name(name)  # created concurrently by another step
        if existing is None:
            raise
        return str(existing.experiment_id)


def _artifacts_beside(uri: str, root: Path) -> str | None:
    """`<dir of the .db>/mlruns` for a file-backed sqlite store, so a store and its artifacts move together."""
    if not uri.startswith("sqlite:///"):
        return None
    db = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not db or db == ":memory:":
        return (root / "mlruns").as_uri()
    return (Path(db).resolve().parent / "mlruns").as_uri()


def follow_leader(cfg: DictConfig, root: Path) -> PlacedRun:
    """A non-zero DDP rank: the leader's run, read-only, and quiet logs."""
    import mlflow

    uri = resolve_tracking_uri(cfg.tracking.get("uri"), root)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    run_id = os.environ.get(LEADER_RUN_ENV) or _find_leader(client, cfg)
    logging.getLogger().setLevel(logging.WARNING)
    return PlacedRun(run_id=run_id, experiment_id=client.get_run(run_id).info.experiment_id,
                     client=ReadOnlyClient(client), attached=True, params={}, new_params={}, leader=False)  # type: ignore[arg-type]


def _find_leader(client: MlflowClient, cfg: DictConfig) -> str:
    """torchrun/srun started this rank beside rank zero, not after it: wait for rank zero's run."""
    # rank zero started when this rank did; a minute's slack for slow nodes and clocks
    started_after = time.time() - (process_age_s() or 0.0) - 60
    experiment = os.environ.get("MLFLOW_EXPERIMENT_ID") or str(cfg.tracking.experiment_name)
    run_id = find_leader_run(client, str(job_key()), experiment, started_after, cfg.tracking.leader_timeout_s)
    os.environ[LEADER_RUN_ENV] = run_id
    return run_id
