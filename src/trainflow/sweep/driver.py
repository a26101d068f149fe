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
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig, OmegaConf

from trainflow.config.redact import mask_secrets, redact_overrides
from trainflow.errors import ConfigError, TrainflowError
from trainflow.sweep.recovery import Lease, end_lost_sweeps, fail_stale, heartbeat_enabled
from trainflow.sweep.space import SearchParam, as_override, first_values, search_space
from trainflow.sweep.study import (
    DIRECTIONS,
    StudySpec,
    create_and_queue,
    redact_url,
    resolve_storage,
    study_lock,
)
from trainflow.sweep.trial import ATTR_ERROR, ATTR_RUN, ATTR_SWEEP_RUN, ATTR_WORKER, TAG_STATE, TrialSetup, trial_config
from trainflow.sweep.worker import WAIT_FLAG, WorkerSpec, limit_threads, work
from trainflow.tracking import tags as tag
from trainflow.tracking.headline import log_best_trial_headline
from trainflow.tracking.model_card import write_model_card
from trainflow.tracking.run import StepRun, hydra_overrides

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

# How long interrupted workers get to record their trial before they are killed.
STOP_GRACE_S = 60.0


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


@dataclass
class SweepResult:
    study_name: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    best_run_id: str | None
    states: dict[str, int]
    registered: str | None = None


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
            work(study, plan.setup(run.run_id, worker=0), plan.study.storage, watch=True)
            wait_workers(workers)
    except BaseException as exc:
        stop_workers(workers, signal_of(exc))
        fail_orphans(study, run, plan.own_storage)
        _summarise_quietly(study, run, plan)
        raise
    fail_orphans(study, run, plan.own_storage)
    return summarise(study, run, plan)


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
    No trial is resumed (an interrupted one fails; Optuna samples anew), so
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
    from trainflow.config.compose import compose_error
    from trainflow.config.validate import check_targets

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


# -- worker processes ----------------------------------------------------------

def start_workers(plan: SweepPlan, run: StepRun) -> list[subprocess.Popen]:
    """Workers 1..n-1 as processes; this process is worker 0 (it starts training while they import).

    Workers pre-warmed by `prewarm_workers` are handed their environment; the
    rest start now. If starting one fails (or Ctrl-C lands meanwhile), those
    already started are killed: nothing would stop them otherwise.
    """
    if plan.n_workers <= 1:
        return []
    folder = run.output_dir / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    env = worker_env(run)
    warm, procs = _take_warm_workers(), []
    try:
        for index in range(1, plan.n_workers):
            procs.append(_start_worker(plan, run, index, folder / f"worker-{index}.json", env, warm))
    except BaseException:
        kill_workers([*procs, *(w.proc for w in warm.values())])
        raise
    kill_workers([w.proc for w in warm.values()])  # pre-warmed for a spec this sweep does not have
    return procs


def _start_worker(plan: SweepPlan, run: StepRun, index: int, spec_path: Path, env: dict[str, str],
                  warm: dict[Path, WarmWorker]) -> subprocess.Popen:
    spec = WorkerSpec(study=plan.study, setup=plan.setup(run.run_id, index), threads=1, parent_pid=os.getpid())
    spec_path.write_text(spec.to_json())
    ready = warm.pop(spec_path, None)
    if ready is not None and ready.start(env):
        return ready.proc
    # Own session: a terminal's Ctrl-C reaches only the sweep, which forwards
    # it once (stop_workers), so no worker sees two signals.
    return subprocess.Popen([sys.executable, "-m", f"{__package__}.worker", str(spec_path)], env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True)


@dataclass
class WarmWorker:
    """A worker process importing ahead of its sweep, and the environment it was started with."""

    proc: subprocess.Popen
    env: dict[str, str]

    def start(self, env: dict[str, str]) -> bool:
        """Send the worker what `env` changes of its own environment; False (and killed) if it is gone."""
        if self.proc.poll() is not None or self.proc.stdin is None:
            kill_workers([self.proc])
            return False
        changes = {"set": {k: v for k, v in env.items() if self.env.get(k) != v},
                   "unset": [k for k in self.env if k not in env]}
        try:
            self.proc.stdin.write(json.dumps(changes) + "\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            kill_workers([self.proc])
            return False
        return True


# Pre-warmed workers by the spec path each will read; see prewarm_workers.
_WARM: dict[Path, WarmWorker] = {}


def prewarm_workers(cfg: DictConfig, output_dir: Path) -> None:
    """Start workers 1..n-1 now, before this process imports MLflow and Optuna and opens its run.

    A worker's start-up is its imports (torch, Lightning, MLflow: ~8 s here);
    started only once the sweep's run and study exist, each began its first
    trial that much after the sweep's own. Started here they import while the
    sweep starts, and `start_workers` sends each its environment (the run's
    tracking URI and experiment) on stdin. Workers this process never needs
    (its config or run fails first) are killed at exit, or read end of input
    and end.
    """
    n_workers = OmegaConf.select(cfg, "sweep.n_workers")
    if not isinstance(n_workers, int) or n_workers <= 1 or _WARM:
        return
    from trainflow.tracking.ranks import LEADER_RUN_ENV

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for key in ("MLFLOW_RUN_ID", LEADER_RUN_ENV):
        env.pop(key, None)
    atexit.register(_discard_warm_workers)
    for index in range(1, n_workers):
        spec_path = output_dir / "workers" / f"worker-{index}.json"
        proc = subprocess.Popen([sys.executable, "-m", f"{__package__}.worker", WAIT_FLAG, str(spec_path)],
                                env=env, stdin=subprocess.PIPE, text=True, start_new_session=True)
        _WARM[spec_path] = WarmWorker(proc, env)


def _take_warm_workers() -> dict[Path, WarmWorker]:
    warm = dict(_WARM)
    _WARM.clear()
    return warm


def _discard_warm_workers() -> None:
    kill_workers([w.proc for w in _take_warm_workers().values()])


def kill_workers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def worker_env(run: StepRun) -> dict[str, str]:
    """The sweep's store, experiment and project root; not its run (trials are new runs)."""
    from trainflow.tracking.ranks import LEADER_RUN_ENV

    env = dict(os.environ)
    for key in ("MLFLOW_RUN_ID", LEADER_RUN_ENV):
        env.pop(key, None)
    env.update(MLFLOW_TRACKING_URI=run.tracking_uri, MLFLOW_EXPERIMENT_ID=run.experiment_id,
               TRAINFLOW_ROOT=str(run.root), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def wait_workers(procs: list[subprocess.Popen]) -> None:
    for index, proc in enumerate(procs, start=1):
        code = proc.wait()
        if code != 0:
            log.warning("sweep worker %d exited with status %s; its unfinished trial is marked FAIL", index, code)


def stop_workers(procs: list[subprocess.Popen], signum: int) -> None:
    """Forward the interruption once; kill what has not ended within STOP_GRACE_S."""
    alive = [p for p in procs if p.poll() is None]
    for proc in alive:
        proc.send_signal(signum)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in alive:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def signal_of(exc: BaseException) -> int:
    """The signal that interrupted the sweep (step_run exits 128+signal); SIGTERM otherwise."""
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code > 128:
        return exc.code - 128
    return signal.SIGTERM


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
                run.client.set_tag(trial_run, TAG_STATE, "FAIL")
                run.client.set_terminated(trial_run, "FAILED")
    except Exception as exc:
        log.warning("could not fail orphaned trials: %s", exc)


# -- the parent run's summary ----------------------------------------------------

def summarise(study: optuna.Study, run: StepRun, plan: SweepPlan) -> SweepResult:
    """Best value, best params and a trials table on the parent run, over the whole study."""
    from mlflow.entities import Metric, Param, RunTag
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    run.client.log_text(run.run_id, trials_csv(trials), "sweep/trials.csv")
    now = int(time.time() * 1000)
    counts = [Metric(f"sweep/n_{s.name.lower()}", float(states.get(s.name, 0)), now, 0)
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    run.client.log_batch(run.run_id, metrics=counts)
    if not states.get("COMPLETE"):
        raise TrainflowError(f"sweep: no trial completed ({dict(states)}); see the trial runs under run {run.run_id}")
    best = study.best_trial
    assert best.value is not None
    best_run = best.user_attrs.get(ATTR_RUN)
    run.client.log_batch(
        run.run_id,
        metrics=[Metric(f"best/{plan.metric}", float(best.value), now, 0)],
        params=[Param(f"best.{k}", str(v)) for k, v in best.params.items()],
        tags=[RunTag(tag.SWEEP_BEST_TRIAL, str(best.number)),
              RunTag(tag.SWEEP_BEST_RUN_ID, str(best_run or ""))],
    )
    log_best_trial_headline(run.client, run.run_id, best_run)
    # a secret override would otherwise reach this artifact verbatim: pass secrets by the environment
    reproduce = redact_overrides([o for o in plan.overrides if not o.startswith(("hparams_search=", "sweep."))])
    best_params = {k: v for k, v in best.params.items()}
    run.client.log_text(run.run_id, yaml.safe_dump({
        "trial": best.number, "value": best.value, "run_id": best_run, "params": best_params,
        "command": "python steps/train.py " + " ".join([*reproduce, *(as_override(k, v)
                                                                     for k, v in best_params.items())]),
    }, sort_keys=False), "sweep/best.yaml")
    print(f"sweep: best trial {best.number} {plan.metric}={best.value:.6g} {best_params} (run {best_run})",
          flush=True)
    return SweepResult(plan.study.name, best.value, best_params, best.number, best_run,
                       {k: int(v) for k, v in states.items()})


def _summarise_quietly(study: optuna.Study, run: StepRun, plan: SweepPlan) -> None:
    """An interrupted sweep still shows the best of its finished trials."""
    try:
        summarise(study, run, plan)
    except Exception as exc:
        log.info("no summary for the interrupted sweep: %s", exc)


def trials_csv(trials: list[optuna.trial.FrozenTrial]) -> str:
    """number, state, value, seconds, run id, worker, error, then one column per parameter."""
    names = sorted({k for t in trials for k in t.params})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["number", "state", "value", "duration_s", "run_id", "worker", "error", *names])
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else ""
        writer.writerow([t.number, t.state.name, "" if t.value is None else t.value, duration,
                         t.user_attrs.get(ATTR_RUN, ""), t.user_attrs.get(ATTR_WORKER, ""),
                         t.user_attrs.get(ATTR_ERROR, ""), *(t.params.get(n, "") for n in names)])
    return out.getvalue()


def register_best(run: StepRun, result: SweepResult, plan: SweepPlan) -> str:
    """A registry version of the best trial's logged model, tagged like the train step's versions."""
    import mlflow

    assert result.best_run_id and plan.model_name
    tags = run.client.get_run(result.best_run_id).data.tags
    model_uri = tags.get(tag.MODEL_URI)
    if not model_uri:
        raise TrainflowError(f"sweep.register_best: best trial run {result.best_run_id} logged no model")
    version_tags = _logged_model_tags(run, model_uri)
    version_tags.update({tag.SWEEP_RUN_ID: run.run_id, tag.SWEEP_STUDY: result.study_name,
                         tag.TRIAL_NUMBER: str(result.best_trial)})
    with study_lock(plan.study.storage, plan.study.name):
        version = _registered_already(run, plan.model_name, result)
        if version is None:
            version = mlflow.register_model(model_uri, plan.model_name, tags=version_tags)
            write_model_card(run.client, version.name, str(version.version), version)
    uri = f"models:/{version.name}/{version.version}"
    run.client.set_tag(run.run_id, tag.REGISTERED, uri)
    print(f"registered {uri} (trial {result.best_trial})", flush=True)
    return uri


def _registered_already(run: StepRun, model_name: str, result: SweepResult) -> Any:
    """The version another machine of this study registered for the same best trial, if any."""
    found = run.client.search_model_versions(
        f"name = '{model_name}' and tags.`{tag.SWEEP_STUDY}` = '{result.study_name}' "
        f"and tags.`{tag.TRIAL_NUMBER}` = '{result.best_trial}'")
    return found[0] if found else None


def _logged_model_tags(run: StepRun, model_uri: str) -> dict[str, str]:
    """The train step's tags on the logged model (data digest, monitor, commit): versions need them."""
    if not model_uri.startswith("models:/m-"):
        return {}
    model_id = model_uri.removeprefix("models:/").split("/")[0]
    tags = run.client.get_logged_model(model_id).tags
    return {k: v for k, v in tags.items() if k.startswith(tag.PREFIX)}


def _output(run: StepRun, result: SweepResult) -> str:
    """The registered version, else the best trial's model, else its run."""
    if result.registered:
        return result.registered
    if result.best_run_id:
        tags = run.client.get_run(result.best_run_id).data.tags
        return tags.get(tag.MODEL_URI) or f"runs:/{result.best_run_id}"
    return f"runs:/{run.run_id}"
