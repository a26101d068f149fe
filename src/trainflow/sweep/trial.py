"""One trial: a train step nested under the sweep's run, with Optuna's pruning callback.

A trial's config is composed from the train config with the sweep's own
overrides plus the sampled values as `key=value` overrides, so its run logs
the command line that reproduces it (`python steps/train.py <overrides>`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, open_dict

from trainflow.config.redact import mask_secrets
from trainflow.config.schema import register_configs
from trainflow.errors import TrainflowError
from trainflow.project import project_root
from trainflow.sweep.capture import output_to
from trainflow.sweep.space import SearchParam, as_override, suggest
from trainflow.tracking import tags as tag
from trainflow.tracking.console import run_link
from trainflow.tracking.run import step_run

if TYPE_CHECKING:
    import optuna

    from trainflow.tracking.run import StepRun

log = logging.getLogger(__name__)

# Optuna user attrs that tie a trial to its runs (the trials table, orphan clean-up).
ATTR_RUN = "mlflow_run_id"
ATTR_SWEEP_RUN = "mlflow_sweep_run_id"
ATTR_WORKER = "worker"
ATTR_ERROR = "error"

# One row per Optuna end state: the status its MLflow run ends with. A pruned
# trial was stopped on purpose; KILLED keeps it out of `status = 'FINISHED'` searches.
# The trial's whole console output, in its output folder and on its run.
TRIAL_LOG = "trial.log"

RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


@dataclass
class TrialSetup:
    """What every trial of one worker shares."""

    sweep_run_id: str
    study_name: str
    overrides: list[str]  # the sweep's overrides + trial-wide ones, before the sampled values
    output_dir: Path  # trials write under <output_dir>/trials/<number>
    metric: str
    space: list[SearchParam]
    worker: int = 0


@dataclass
class TrialOutcome:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    value: float | None
    run_id: str | None
    params: dict[str, Any]
    error: str | None = None
    link: str | None = None  # the run's page (or its id and store): the console line points there


def tie_to_sweep(trial: optuna.Trial, setup: TrialSetup) -> None:
    """The sweep and worker that own a claimed trial: what `fail_orphans` finds it by if its worker dies."""
    trial.set_user_attr(ATTR_SWEEP_RUN, setup.sweep_run_id)
    trial.set_user_attr(ATTR_WORKER, setup.worker)


def run_trial(trial: optuna.Trial, setup: TrialSetup, hold_signals: Callable[[], None] = lambda: None) -> TrialOutcome:
    """Run one trial to an outcome; only an interruption (Ctrl-C, SIGTERM) escapes.

    Its output goes to `trial.log`, logged with its run however it ends
    (capture.output_to). `hold_signals` is called the moment training stops,
    however it stops, before the run ends: from there until the study has the
    outcome, an interrupt must wait, or the run and the study would disagree.
    """
    output_dir = setup.output_dir / "trials" / f"{trial.number:04d}"
    runs: list[StepRun] = []  # the trial's run, once step_run has made it
    try:
        with output_to(output_dir / TRIAL_LOG):
            return _run_trial(trial, setup, output_dir, hold_signals, runs)
    finally:
        if runs:
            _log_trial_output(runs[0], output_dir / TRIAL_LOG)


def _run_trial(trial: optuna.Trial, setup: TrialSetup, output_dir: Path, hold_signals: Callable[[], None],
               runs: list[StepRun]) -> TrialOutcome:
    params: dict[str, Any] = {}
    run: StepRun | None = None
    state, value, error = "FAIL", None, None
    try:
        params = suggest(trial, setup.space)
        overrides = [*setup.overrides, *(as_override(k, v) for k, v in params.items())]
        with trial_config(overrides, output_dir, trial.number) as cfg, \
                step_run("train", cfg, output_dir=output_dir, parent_run_id=setup.sweep_run_id) as run:
            runs.append(run)
            try:
                _tag_trial(run, trial, setup, params)
                state, value = fit_trial(cfg, run, trial, setup.metric)
            finally:
                hold_signals()
    except SystemExit as exc:
        if is_interruption(exc):
            _tag_interrupted(run)
            raise
        error = _recorded_error(run) or f"exit status {exc.code}"  # a TrainflowError, recorded by step_run
    except Exception as exc:
        error = mask_secrets(f"{type(exc).__name__}: {exc}", setup.overrides)  # reaches trials.csv
        log.warning("trial %d failed: %s", trial.number, error)
    link = run_link(run.tracking_uri, run.experiment_id, run.run_id) if run else None
    outcome = TrialOutcome(trial.number, state, value, run.run_id if run else None, params, error, link)
    if error:
        trial.set_user_attr(ATTR_ERROR, error[:1000])
    if run is not None:
        record_outcome(run, outcome)
    return outcome


def _log_trial_output(run: StepRun, path: Path) -> None:
    """The trial's captured output as `trial.log` on its run (the run has ended; artifacts may still come)."""
    try:
        run.client.log_artifact(run.run_id, str(path))
    except Exception as exc:
        log.warning("could not log %s with run %s: %s", path, run.run_id, exc)


def fit_trial(cfg: DictConfig, run: StepRun, trial: optuna.Trial, metric: str) -> tuple[str, float | None]:
    """Train with the pruning callback; the monitored metric is the trial's value."""
    import optuna
    from optuna_integration.pytorch_lightning import PyTorchLightningPruningCallback

    from trainflow.training.train import train

    try:
        result = train(cfg, run, extra_callbacks=[PyTorchLightningPruningCallback(trial, monitor=metric)])
    except optuna.TrialPruned as exc:
        log.info("trial %d pruned: %s", trial.number, exc)
        return "PRUNED", None
    if result.monitored is None:
        raise TrainflowError(f"optimized_metric: the trial logged no '{metric}' "
                             f"(logged: {', '.join(sorted(result.metrics)) or 'nothing'})")
    return "COMPLETE", float(result.monitored)


def is_interruption(exc: SystemExit) -> bool:
    """step_run exits 128+signal when interrupted, 1 for errors a user can fix."""
    return isinstance(exc.code, int) and exc.code > 128


@contextmanager
def trial_config(overrides: list[str], output_dir: Path, number: int) -> Iterator[DictConfig]:
    """The train config as `python steps/train.py <overrides>` composes it, Hydra's runtime set.

    The sweep's own HydraConfig comes back afterwards: trials may run in the
    sweep's process.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    if not GlobalHydra.instance().is_initialized():  # a worker process: no @hydra.main ran
        register_configs()
        initialize_config_dir(config_dir=str(project_root() / "configs"), version_base="1.3")
    cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = number
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        yield cfg
    finally:
        HydraConfig.instance().cfg = previous


def _tag_trial(run: StepRun, trial: optuna.Trial, setup: TrialSetup, params: dict[str, Any]) -> None:
    from mlflow.entities import RunTag
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

    trial.set_user_attr(ATTR_RUN, run.run_id)
    tags = {
        MLFLOW_RUN_NAME: f"trial-{trial.number}",
        tag.TRIAL_NUMBER: str(trial.number),
        tag.TRIAL_STATE: "RUNNING",
        tag.SWEEP_STUDY: setup.study_name,
        tag.TRIAL_PARAMS: json.dumps(params),
        tag.TRIAL_WORKER: str(setup.worker),
    }
    run.client.log_batch(run.run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def _recorded_error(run: StepRun | None) -> str | None:
    if run is None:
        return None
    try:
        return run.client.get_run(run.run_id).data.tags.get(tag.ERROR)
    except Exception:
        return None


def _tag_interrupted(run: StepRun | None) -> None:
    """An interrupted trial fails in Optuna; its run stays KILLED, as step_run ended it."""
    if run is None:
        return
    try:
        run.client.set_tag(run.run_id, tag.TRIAL_STATE, "FAIL")
    except Exception as exc:
        log.warning("could not tag interrupted run %s: %s", run.run_id, exc)


def record_outcome(run: StepRun, outcome: TrialOutcome) -> None:
    """The trial's end state on its run: a tag, and the run status the table above maps it to."""
    try:
        run.client.set_tag(run.run_id, tag.TRIAL_STATE, outcome.state)
        if outcome.value is not None:
            run.client.set_tag(run.run_id, tag.TRIAL_VALUE, repr(outcome.value))
        status = RUN_STATUS[outcome.state]
        if run.client.get_run(run.run_id).info.status != status:
            run.client.set_terminated(run.run_id, status)
    except Exception as exc:
        log.warning("could not record trial %d's state on run %s: %s", outcome.number, run.run_id, exc)
