"""The sweep step: one parent run, an Optuna study, trials as nested train runs.

    with step_run("sweep", cfg) as run:      # steps/sweep.py and the `-m` sweeper alike
        result = run_sweep(cfg, run)

Recipe: read the study config -> check one trial composes -> create the study
and queue its trials (under a lock every machine shares) -> take a lease and
end lost machines' runs -> start workers -> work in this process too, then
watch the study until no trial is running anywhere (a lost machine's trial
comes back to the queue) -> wait -> summarise the whole study on the parent
run (best value and params, a trials table) -> register the best trial's
model if asked, once per study whichever machine gets there first.

This module plans and orders; the pieces live beside it: `worker` (worker
processes), `loop` (what every worker runs), `summary` (the parent run's
result and the best-trials table), `registry.versions.register_best_trial`.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from trainflow.config.compose import compose_error
from trainflow.config.redact import mask_secrets
from trainflow.config.validate import check_targets
from trainflow.errors import ConfigError, TrainflowError
from trainflow.registry.versions import register_best_trial
from trainflow.sweep.loop import limit_threads, work
from trainflow.sweep.optuna_adapter import heartbeat_enabled
from trainflow.sweep.recovery import Lease, end_lost_sweeps, fail_stale, lease_lost_after
from trainflow.sweep.space import SearchParam, as_override, first_values, search_space
from trainflow.sweep.study import (
    DIRECTIONS,
    StudySpec,
    create_and_queue,
    redact_url,
    resolve_storage,
    study_lock,
)
from trainflow.sweep.summary import SweepResult, summarise, summarise_quietly
from trainflow.sweep.trial import ATTR_RUN, ATTR_SWEEP_RUN, TrialSetup, trial_config
from trainflow.sweep.worker import signal_of, start_processes, stop_workers, wait_workers, worker_env
from trainflow.tracking import tags as tag
from trainflow.tracking.run import StepRun, hydra_overrides

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


@dataclass
class SweepPlan:
    """The study config, checked and resolved: what the parent and every worker run."""

    study: StudySpec
    n_trials: int
    n_workers: int
    space: list[SearchParam]
    metric: str
    overrides: list[str]  # every trial's overrides before its sampled values
    output_dir: Path
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    register_best: bool = False
    model_name: str | None = None
    own_storage: bool = False  # made for this sweep (sweep.storage null): no other sweep has trials in it

    def setup(self, sweep_run_id: str, worker: int) -> TrialSetup:
        return TrialSetup(sweep_run_id=sweep_run_id, study_name=self.study.name, overrides=self.overrides,
                          output_dir=self.output_dir, metric=self.metric, space=self.space, worker=worker)


def run_sweep(cfg: DictConfig, run: StepRun) -> SweepResult:
    plan = sweep_plan(cfg, run.output_dir, run.run_id)
    check_trial_config(plan)
    study, queued = create_and_queue(plan.study, plan.n_trials, plan.enqueue)
    _tag_sweep(run, plan, queued)
    lease = Lease(study, run.run_id, plan.study.heartbeat_s or 0).start() if heartbeat_enabled(study) else None
    try:
        result = _run_trials(study, run, plan)
    finally:
        if lease is not None:
            lease.end()
    if plan.register_best and result.best_run_id:
        result.registered = register_best(run, result, plan)
    run.set_output(_output(run, result))
    return result


def _run_trials(study: optuna.Study, run: StepRun, plan: SweepPlan) -> SweepResult:
    """Lost machines' runs ended, workers started, trials run and watched to the study's end, summarised."""
    if heartbeat_enabled(study):
        fail_stale(study)
        end_lost_sweeps(study, run.client, plan.study.grace_s)
    workers = start_workers(plan, run)
    try:
        # Imports the model code (seconds) while the workers import theirs.
        check_trial_config(plan, targets=True)
        with run.timed("trials"):
            limit_threads(1 if plan.n_workers > 1 else None)
            work(study, plan.setup(run.run_id, worker=0), plan.study.storage, plan.study.max_retry, watch=True,
                 signalled=run.signalled)
            wait_workers(workers)
    except BaseException as exc:
        stop_workers(workers, signal_of(exc))
        fail_orphans(study, run, plan.own_storage)
        summarise_quietly(study, run, plan.metric, plan.overrides)
        raise
    if heartbeat_enabled(study):
        # A machine lost near the end can still have looked alive when its trial was failed as stale
        # (recovery.lease_lost_after); by now that trial has been run again, and the lease has had that long.
        end_lost_sweeps(study, run.client, lease_lost_after(plan.study.grace_s, plan.study.heartbeat_s or 0))
    fail_orphans(study, run, plan.own_storage)
    return summarise(study, run, plan.metric, plan.overrides)


def start_workers(plan: SweepPlan, run: StepRun) -> list[subprocess.Popen]:
    """Workers 1..n-1 as processes, in the sweep's store and experiment; this process is worker 0."""
    if plan.n_workers <= 1:
        return []
    return start_processes(plan.study, [plan.setup(run.run_id, i) for i in range(1, plan.n_workers)],
                           run.output_dir / "workers", worker_env(run.tracking_uri, run.experiment_id, run.root))


def sweep_plan(cfg: DictConfig, output_dir: Path, run_id: str) -> SweepPlan:
    """Read `sweep` (from hparams_search); every inconsistency fails here, naming the key."""
    if cfg.get("sweep") is None:
        raise ConfigError("sweep: no study configured; pass hparams_search=<name> (configs/hparams_search/)")
    node = OmegaConf.to_container(cfg.sweep, resolve=True)
    assert isinstance(node, dict)
    metric = cfg.get("optimized_metric")
    if not metric:
        raise ConfigError("optimized_metric: a sweep needs the metric it optimises")
    if node["direction"] not in DIRECTIONS:
        raise ConfigError(f"sweep.direction: '{node['direction']}' is not maximize or minimize")
    for key in ("n_trials", "n_workers", "heartbeat_s"):
        if node[key] < 1:
            raise ConfigError(f"sweep.{key}: must be at least 1 (got {node[key]})")
    if node["grace_s"] < 2 * node["heartbeat_s"]:
        raise ConfigError(f"sweep.grace_s: must be at least twice sweep.heartbeat_s ({node['heartbeat_s']}s; "
                          f"got {node['grace_s']}s), or a live machine could look lost between two beats")
    _check_strategy(cfg)
    model_name = cfg.registry.get("model_name")
    if node["register_best"] and not model_name:
        raise ConfigError("sweep.register_best: registry.model_name is null; name the model to register")
    storage = resolve_storage(node["storage"], node["n_workers"], output_dir)
    study = StudySpec(name=node["study_name"] or f"sweep-{run_id}", storage=storage,
                      direction=node["direction"], sampler=node["sampler"], pruner=node["pruner"],
                      seed=cfg.get("seed"), heartbeat_s=node["heartbeat_s"] if storage else None,
                      grace_s=node["grace_s"], max_retry=node["max_retry"])
    return SweepPlan(study=study, n_trials=node["n_trials"], n_workers=node["n_workers"],
                     space=search_space(node["params"]), metric=str(metric),
                     overrides=trial_overrides(hydra_overrides(), node["register_best"], node["n_workers"]),
                     output_dir=output_dir, enqueue=list(node["enqueue_trials"]),
                     register_best=node["register_best"], model_name=model_name,
                     own_storage=node["storage"] is None)


def _check_strategy(cfg: DictConfig) -> None:
    """Lightning's `ddp` re-runs the script for every rank: in a sweep that reruns the sweep."""
    strategy = str(cfg.trainer.get("strategy"))
    if strategy.startswith("ddp") and not any(s in strategy for s in ("spawn", "fork", "notebook")):
        raise ConfigError(f"trainer.strategy={strategy}: re-runs the script per rank, which would start the "
                          "sweep again; use trainer.strategy=ddp_spawn in sweeps")


def trial_overrides(sweep_overrides: list[str], register_best: bool, n_workers: int) -> list[str]:
    """The sweep's command line, plus what every trial must be.

    Trials never register (the sweep registers the best one); with
    `register_best` they log their model unregistered so the best can be.
    No trial is resumed (an interrupted one is queued again and starts over), so
    none saves and uploads a `last` checkpoint every epoch (a fifth of a tiny
    trial's time); with the callback removed, the entry is skipped.
    Parallel workers drop progress bars that would overwrite each other.
    """
    registry = ["registry.register=false", "registry.log_model=true"] if register_best \
        else ["registry.register=false", "registry.log_model=false"]
    quiet = ["++callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false"] if n_workers > 1 else []
    return [*sweep_overrides, *registry, "++callbacks.model_checkpoint.save_last=false", *quiet]


def check_trial_config(plan: SweepPlan, targets: bool = False) -> None:
    """Compose one trial (each key at its first value): a misspelt key fails before any study exists.

    `targets` also checks the `_target_` nodes against their signatures,
    which imports the model and data code.
    """
    overrides = [*plan.overrides, *(as_override(k, v) for k, v in first_values(plan.space).items())]
    try:
        with trial_config(overrides, plan.output_dir / "trials" / "check", -1) as cfg:
            if targets:
                check_targets(cfg)
    except TrainflowError as exc:
        raise ConfigError(mask_secrets(f"sweep.params: a trial's config is invalid: {exc}", overrides)) from exc
    except Exception as exc:
        raise ConfigError(mask_secrets(f"sweep.params: a trial's config does not compose: {compose_error(exc)}",
                                       overrides)) from exc


def _tag_sweep(run: StepRun, plan: SweepPlan, queued: int) -> None:
    from mlflow.entities import RunTag

    tags = {
        tag.SWEEP_STUDY: plan.study.name,
        tag.SWEEP_STORAGE: redact_url(plan.study.storage),
        tag.SWEEP_DIRECTION: plan.study.direction,
        tag.SWEEP_METRIC: plan.metric,
        tag.SWEEP_N_TRIALS: str(plan.n_trials),
        tag.SWEEP_N_WORKERS: str(plan.n_workers),
        tag.SWEEP_QUEUED: str(queued),
    }
    run.client.log_batch(run.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    print(f"sweep: study '{plan.study.name}' (storage {redact_url(plan.study.storage)}): {queued} trials "
          f"queued, {plan.n_workers} worker(s)", flush=True)


def fail_orphans(study: optuna.Study, run: StepRun, own_storage: bool = False) -> None:
    """Trials of this sweep still RUNNING after its workers ended (a worker died): FAIL, run FAILED.

    A trial is this sweep's by its user attr, or in a storage made for this
    sweep by being there at all: a worker killed between claiming a trial
    and tying it to the sweep leaves it without attrs. The run is FAILED
    even if it had FINISHED, so a FINISHED trial run always means COMPLETE.
    """
    from optuna.trial import TrialState

    try:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = trial.user_attrs.get(ATTR_SWEEP_RUN)
            if owner != run.run_id and not (owner is None and own_storage):
                continue  # another machine's
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            trial_run = trial.user_attrs.get(ATTR_RUN)
            if trial_run and run.client.get_run(trial_run).info.status in ("RUNNING", "FINISHED"):
                run.client.set_tag(trial_run, tag.TRIAL_STATE, "FAIL")
                run.client.set_terminated(trial_run, "FAILED")
    except Exception as exc:
        log.warning("could not fail orphaned trials: %s", exc)


def register_best(run: StepRun, result: SweepResult, plan: SweepPlan) -> str:
    """The best trial's model as a registry version, once per study whichever machine gets here first."""
    assert result.best_run_id and plan.model_name and result.best_trial is not None
    with study_lock(plan.study.storage, plan.study.name):
        version = register_best_trial(run.client, plan.model_name, result.best_run_id, run.run_id,
                                      result.study_name, result.best_trial)
    uri = f"models:/{version.name}/{version.version}"
    run.client.set_tag(run.run_id, tag.REGISTERED, uri)
    print(f"registered {uri} (trial {result.best_trial})", flush=True)
    return uri


def _output(run: StepRun, result: SweepResult) -> str:
    """The registered version, else the best trial's model, else its run."""
    if result.registered:
        return result.registered
    if result.best_run_id:
        tags = run.client.get_run(result.best_run_id).data.tags
        return tags.get(tag.MODEL_URI) or f"runs:/{result.best_run_id}"
    return f"runs:/{run.run_id}"
