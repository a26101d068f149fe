"""The step contract: one tracked MLflow run around one step.

Every step (prepare_data, train, evaluate, sweep, main) goes through
`step_run`: attach to the run `mlflow run` made or start one, tag it, log the
resolved config, hand the step its run, and end the run FINISHED, FAILED (with
the error on the run) or KILLED (SIGINT/SIGTERM), exiting non-zero for the
last two. A step's own run starts and ends only here. Other runs are ended
elsewhere, each for one reason: the sweep marks trial runs its workers could
not finish, `cli` fails the run `mlflow run` made when the config does not
compose, `tracking.sync` fails a run whose outage upload came too late, and
the pipeline launches its child steps through `mlflow.projects`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from omegaconf import DictConfig, OmegaConf

from trainflow.config.redact import is_secret_key, mask_secrets, redact, redact_overrides, secret_values
from trainflow.config.run_paths import without_run_paths
from trainflow.errors import TrackingError, TrainflowError
from trainflow.project import project_root
from trainflow.tracking import tags as tag
from trainflow.tracking.codeversion import CodeVersion, code_version
from trainflow.tracking.lockfile import lock_digest
from trainflow.tracking.params import flatten, new_params
from trainflow.tracking.ranks import LEADER_RUN_ENV, ReadOnlyClient, find_leader_run, is_follower, job_key
from trainflow.tracking.uri import bound_http_client, check_reachable, resolve_tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

def metric_entities(values: Mapping[str, float], model_id: str | None = None, dataset_name: str | None = None,
                    dataset_digest: str | None = None) -> list[Any]:
    """Figures measured once (step 0, one timestamp) as entities for one `log_batch` request.

    `model_id` and the dataset link them to a logged model, as `log_metric` would one at a time.
    """
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0, model_id=model_id, dataset_name=dataset_name, dataset_digest=dataset_digest)
            for k, v in values.items()]


@dataclass
class StepRun:
    """What a step gets: the run it logs into and the client to do it with."""

    step: str
    run_id: str
    experiment_id: str
    tracking_uri: str
    client: MlflowClient
    root: Path
    output_dir: Path
    code: CodeVersion
    attached: bool  # True when `mlflow run` (or a parent) created the run
    leader: bool = True  # False on non-zero DDP ranks: they write nothing
    outputs: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()  # the config's secret values: masked in any error recorded on the run

    def set_output(self, uri: str, name: str = "output") -> None:
        """Hand the step's product on: a tag other steps and the pipeline read."""
        self.outputs[name] = uri
        key = tag.output(name)
        self.client.set_tag(self.run_id, key, uri)

    def set_outputs(self, outputs: Mapping[str, str]) -> None:
        """Several outputs in one request: none of them is ever on the run without the others."""
        self.outputs.update(outputs)
        self.set_tags({tag.output(name): uri for name, uri in outputs.items()})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Several tags on the run in one request, not one each."""
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Several figures of the step (step 0, one timestamp) in one request, not one each."""
        self.client.log_batch(self.run_id, metrics=metric_entities(metrics))

    def artifact_uri(self, path: str = "") -> str:
        return f"runs:/{self.run_id}/{path}".rstrip("/")

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Wall time of a phase as metric `time/<phase>_s`: where a step's time goes.

        Kept until the step ends, so timing a phase never needs the server
        (training may outlive a tracking outage).
        """
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[f"time/{phase}_s"] = time.perf_counter() - start

    def log_timings(self) -> None:
        metrics = metric_entities(self.timings)
        self.timings = {}
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)


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
    """When a step started, for a step run inside another step's process (pipeline.in_process).

    A step process's own age counts its imports; a step main runs in its
    process starts when main starts it.
    """

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


class _Interrupted:
    """Which signal asked the step to stop, so the run ends KILLED, not FAILED."""

    signum: int | None = None


def interruption() -> int | None:
    """The signal (SIGINT, SIGTERM) that stopped the last step, if one did: a caller ends its own run KILLED."""
    return _Interrupted.signum


def _note_signal(signum: int, frame: FrameType | None) -> None:
    _Interrupted.signum = _Interrupted.signum or signum


def _restore(handlers: dict[signal.Signals, Any]) -> None:
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _Interrupted.signum = signum
    # Lightning turns KeyboardInterrupt into a graceful teardown (and exit(1));
    # outside fit it unwinds to step_run like Ctrl-C does.
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def step_run(step: str, cfg: DictConfig, output_dir: Path | None = None,
             parent_run_id: str | None = None) -> Iterator[StepRun]:
    """Attach or start, tag, log config; end with the right status.

    In four parts, in the order they happen: where the run logs
    (`_tracking_target`), which run it is (`_placed_run`, signals held while
    it is made), what the run records about itself (`_log_run_identity`), and
    how it ends (`_outcome`, `_clean_exit`, `_close`).

    `parent_run_id`: start a new run nested under that one (a sweep's trial,
    possibly in another process), never attaching to `MLFLOW_RUN_ID`.
    """
    import mlflow

    root = project_root()
    output_dir = output_dir or _hydra_output_dir() or Path(tempfile.mkdtemp(prefix=f"trainflow-{step}-"))
    if is_follower():
        with _follower_run(step, cfg, root, output_dir) as ctx:
            yield ctx
        return
    uri, code, tree = _tracking_target(mlflow, cfg, root, output_dir)
    previous = _hold_signals()
    ctx, logged_params = _placed_run(mlflow, step, cfg, root, uri, code, output_dir, parent_run_id, previous)
    status = "FAILED"
    try:
        _arm_signals(previous)
        age = step_age_s()
        if age is not None:
            ctx.timings["time/startup_s"] = age
        _log_run_identity(ctx, cfg, tree, logged_params)
        yield ctx
        ctx.log_timings()
        status = "FINISHED"
        _print_summary(ctx, age)
    except BaseException as exc:
        status = _outcome(ctx, exc)
        clean_exit = _clean_exit(ctx, exc)
        if clean_exit is None:
            raise
        _end(mlflow, status)
        raise clean_exit from None
    finally:
        _close(mlflow, ctx, previous, status)


def _tracking_target(mlflow: Any, cfg: DictConfig, root: Path, output_dir: Path) -> tuple[str, CodeVersion, str | None]:
    """(tracking URI, code version, printed config tree), checked before any run exists: a bad one exits 1."""
    from trainflow.config.extras import apply_extras

    try:
        tree = apply_extras(cfg, output_dir)
        uri = resolve_tracking_uri(cfg.tracking.get("uri"), root)
        bound_http_client(cfg.tracking.connect_timeout_s, cfg.tracking.http_max_retries)
        check_reachable(uri, cfg.tracking.connect_timeout_s)
        mlflow.set_tracking_uri(uri)
        return uri, code_version(root), tree
    except TrainflowError as exc:
        _fail_cleanly(exc)


def _hold_signals() -> dict[signal.Signals, Any]:
    """Only note SIGINT/SIGTERM while the run is being made: raised midway, they could leave a RUNNING run."""
    _Interrupted.signum = None
    return {s: signal.signal(s, _note_signal) for s in (signal.SIGTERM, signal.SIGINT)}


def _arm_signals(previous: dict[signal.Signals, Any]) -> None:
    """From here a signal unwinds the step; one that arrived while the run was made does so at once."""
    for signum in previous:
        signal.signal(signum, _on_signal)
    if _Interrupted.signum is not None:
        raise KeyboardInterrupt(signal.Signals(_Interrupted.signum).name)


def _placed_run(mlflow: Any, step: str, cfg: DictConfig, root: Path, uri: str, code: CodeVersion, output_dir: Path,
                parent_run_id: str | None, previous: dict[signal.Signals, Any]) -> tuple[StepRun, dict[str, str]]:
    """The run this step logs into (attached, resumed, nested or new), and the params already on it.

    No run made: exit, naming why. The params come with the run that
    start_run fetched, so checking them costs no request of its own.
    """
    try:
        run, attached = _attach_or_start(mlflow, cfg, step, root, uri, parent_run_id)  # names a bad URI
        client = mlflow.MlflowClient(uri)
    except BaseException as exc:
        _restore(previous)
        if _Interrupted.signum is not None:  # no run was made: the interruption is the news
            _exit_interrupted(step, _Interrupted.signum, None)
        if isinstance(exc, TrainflowError):
            _fail_cleanly(exc)
        raise
    # DDP ranks that Lightning starts later inherit the environment: this is how they follow the run.
    os.environ[LEADER_RUN_ENV] = run.info.run_id
    ctx = StepRun(step=step, run_id=run.info.run_id, experiment_id=run.info.experiment_id, tracking_uri=uri,
                  client=client, root=root, output_dir=output_dir, code=code, attached=attached)
    return ctx, dict(run.data.params)


def _outcome(ctx: StepRun, exc: BaseException) -> str:
    """The status an exception out of the step means, with its reason recorded on the run."""
    if isinstance(exc, SystemExit) and _Interrupted.signum is None:
        if exc.code:  # sys.exit(n) inside a step: its own status
            _record_error(ctx, f"exited with status {exc.code}")
        return "FAILED" if exc.code else "FINISHED"
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        _record_error(ctx, f"interrupted by {signal.Signals(_Interrupted.signum or signal.SIGINT).name}")
        return "KILLED"
    user_error = exc if isinstance(exc, TrainflowError) else wrapped_user_error(exc)
    if user_error is not None:
        _record_error(ctx, str(user_error))
    else:
        _record_error(ctx, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    return "FAILED"


def _clean_exit(ctx: StepRun, exc: BaseException) -> SystemExit | None:
    """An interruption (128+signal) or an error a user can fix (1), its line printed; None: `exc` propagates."""
    if isinstance(exc, SystemExit) and _Interrupted.signum is None:
        return None
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return _interrupted(ctx.step, _Interrupted.signum or signal.SIGINT, ctx.run_id)
    # a TrainflowError, or one a data or model constructor raised inside hydra's instantiate
    user_error = exc if isinstance(exc, TrainflowError) else wrapped_user_error(exc)
    return _user_error_exit(user_error) if user_error is not None else None


def _close(mlflow: Any, ctx: StepRun, previous: dict[signal.Signals, Any], status: str) -> None:
    os.environ.pop(LEADER_RUN_ENV, None)
    _restore(previous)
    active = mlflow.active_run()
    if active is not None and active.info.run_id == ctx.run_id:  # never a parent's run (nested trials)
        _end(mlflow, status)


@contextmanager
def _follower_run(step: str, cfg: DictConfig, root: Path, output_dir: Path) -> Iterator[StepRun]:
    """A non-zero DDP rank: the leader's run, read-only, and quiet logs."""
    import mlflow

    uri = resolve_tracking_uri(cfg.tracking.get("uri"), root)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    run_id = os.environ.get(LEADER_RUN_ENV) or _find_leader(client, cfg)
    logging.getLogger().setLevel(logging.WARNING)
    yield StepRun(step=step, run_id=run_id, experiment_id=client.get_run(run_id).info.experiment_id,
                  tracking_uri=uri, client=ReadOnlyClient(client), root=root,  # type: ignore[arg-type]
                  output_dir=output_dir, code=code_version(root), attached=True, leader=False)


def _find_leader(client: MlflowClient, cfg: DictConfig) -> str:
    """torchrun/srun started this rank beside rank zero, not after it: wait for rank zero's run."""
    # rank zero started when this rank did; a minute's slack for slow nodes and clocks
    started_after = time.time() - (process_age_s() or 0.0) - 60
    experiment = os.environ.get("MLFLOW_EXPERIMENT_ID") or str(cfg.tracking.experiment_name)
    try:
        run_id = find_leader_run(client, str(job_key()), experiment, started_after, cfg.tracking.leader_timeout_s)
    except TrainflowError as exc:
        _fail_cleanly(exc)
    os.environ[LEADER_RUN_ENV] = run_id
    return run_id


def _print_summary(ctx: StepRun, started_age: float | None) -> None:
    """One line per finished step: its output URI and its run (tracking/console.py)."""
    from trainflow.tracking.console import run_link, step_summary

    now = step_age_s()
    took = now - started_age if now is not None and started_age is not None else None
    if ctx.leader:
        print(step_summary(ctx.step, ctx.outputs, run_link(ctx.tracking_uri, ctx.experiment_id, ctx.run_id), took),
              flush=True)


def _interrupted(step: str, signum: int, run_id: str | None) -> SystemExit:
    name = signal.Signals(signum).name
    ended = f"; run {run_id} KILLED" if run_id else "; no run was made"
    print(f"error: {step} interrupted by {name}{ended}", file=sys.stderr, flush=True)
    return SystemExit(128 + int(signum))


def _exit_interrupted(step: str, signum: int, run_id: str | None) -> NoReturn:
    raise _interrupted(step, signum, run_id) from None


def _user_error_exit(exc: TrainflowError) -> SystemExit:
    print(f"error: {exc}", file=sys.stderr, flush=True)
    return SystemExit(1)


def _fail_cleanly(exc: TrainflowError) -> NoReturn:
    raise _user_error_exit(exc) from None


def _end(mlflow: Any, status: str) -> None:
    try:
        mlflow.end_run(status=status)
    except Exception as exc:
        log.warning("could not mark run %s: %s", status, exc)


def _hydra_output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return None


def _attach_or_start(mlflow: Any, cfg: DictConfig, step: str, root: Path, uri: str,
                     parent_run_id: str | None = None) -> tuple[Any, bool]:
    """`mlflow run` made a run for us (MLFLOW_RUN_ID): use it, never a second one."""
    name = cfg.tracking.get("run_name") or default_run_name(step, cfg)
    if parent_run_id:
        # a new child: MLflow's start_run would attach to MLFLOW_RUN_ID (the parent's, under `mlflow run`)
        os.environ.pop("MLFLOW_RUN_ID", None)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    try:
        if cfg.get("resume"):
            return _reopen(mlflow, str(cfg.resume), run_id), True
        if run_id:  # nested when main runs this step in its own process (pipeline.in_process)
            # the name travels with the status update start_run makes anyway: no request of its own
            run = mlflow.start_run(run_id=run_id, run_name=name, nested=mlflow.active_run() is not None)
            return run, True
        experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or _experiment_id(
            mlflow, cfg.tracking.experiment_name, root, uri)
        nested = mlflow.active_run() is not None
        run = mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=nested, parent_run_id=parent_run_id)
        return run, nested or parent_run_id is not None
    except TrainflowError:
        raise
    except Exception as exc:
        where = f"run {run_id}" if run_id else f"experiment '{cfg.tracking.experiment_name}'"
        raise TrackingError(f"tracking store {uri}: cannot open {where}: {_first_line(exc)}") from exc


def _reopen(mlflow: Any, resume: str, created: str | None) -> Any:
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
    if created and created != resume:
        client.set_tag(created, tag.RESUMED_INTO, resume)
        client.set_terminated(created, "FINISHED")
    os.environ.pop("MLFLOW_RUN_ID", None)
    run = mlflow.start_run(run_id=resume)
    count = int(previous.data.tags.get(tag.RESUMES, "0")) + 1
    client.set_tag(resume, tag.RESUMES, str(count))
    client.delete_tag(resume, tag.ERROR) if tag.ERROR in previous.data.tags else None
    return run


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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


def default_run_name(step: str, cfg: DictConfig) -> str:
    """`train-example-digits lr=0.01`: step, experiment, data and what was overridden (tracking/run_name.py)."""
    from trainflow.tracking.run_name import run_name

    return run_name(step, _hydra_choices(), hydra_overrides())


def _hydra_choices() -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return dict(HydraConfig.get().runtime.choices)


def hydra_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def _log_run_identity(ctx: StepRun, cfg: DictConfig, tree: str | None, logged: dict[str, str]) -> None:
    """Tags, params and config artifacts: enough to rebuild the run.

    `logged`: the params on the run when it was placed (`mlflow run` logs each `-P`).
    """
    from trainflow.config.hashing import config_hash

    plain = OmegaConf.to_container(cfg, resolve=True)
    ctx.secrets = tuple(secret_values(plain))
    resolved = redact(plain)
    assert isinstance(resolved, dict)
    overrides = hydra_overrides()
    tags = {
        tag.STEP: ctx.step,
        tag.GIT_COMMIT: ctx.code.commit or "",
        tag.GIT_DIRTY: str(ctx.code.dirty).lower(),
        tag.CODE_VERSION: ctx.code.id,
        tag.LOCK_DIGEST: lock_digest(ctx.root),
        tag.CONFIG_HASH: config_hash(resolved),
        tag.OVERRIDES: json.dumps(redact_overrides(overrides)),
        tag.USER_TAGS: ",".join(str(t) for t in cfg.get("tags") or []),
    }
    tags.update({f"tag.{t}": "true" for t in cfg.get("tags") or []})
    job = job_key()
    if job is not None:  # torchrun/srun: the other ranks find this run by it
        tags[tag.JOB] = job
    ctx.set_tags(tags)
    if cfg.tracking.get("log_params", True):
        for key in logged:
            if is_secret_key(key):
                log.warning("param %s was logged by `mlflow run` before trainflow could redact it: "
                            "pass secrets through the environment, not -P", key)
        params = new_params(without_run_paths(flatten({k: v for k, v in resolved.items() if k != "hydra"}), cfg),
                            logged)
        _log_params(ctx, params)
    _log_text(ctx, OmegaConf.to_yaml(OmegaConf.create(resolved)), "config.yaml")
    _log_text(ctx, OmegaConf.to_yaml(OmegaConf.create(redact_overrides(overrides))), "overrides.yaml")
    if tree is not None:
        _log_text(ctx, tree, "config_tree.log")


def _log_params(ctx: StepRun, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow's per-request param limit
        ctx.client.log_batch(ctx.run_id, params=items[start : start + 100])


def _log_text(ctx: StepRun, text: str, name: str) -> None:
    ctx.client.log_text(ctx.run_id, text, name)


def _record_error(ctx: StepRun, message: str, trace: str | None = None) -> None:
    """The reason a run failed belongs on the run, not only in a terminal.

    Hydra and constructors echo values into their messages, a secret
    override's too: masked before they are stored.
    """
    overrides = hydra_overrides()
    try:
        ctx.client.set_tag(ctx.run_id, tag.ERROR, mask_secrets(message, overrides, ctx.secrets)[:5000])
        if trace:
            ctx.client.log_text(ctx.run_id, mask_secrets(trace, overrides, ctx.secrets), "error.txt")
    except Exception as exc:
        log.warning("could not record the error on run %s: %s", ctx.run_id, exc)


def wrapped_user_error(exc: BaseException) -> TrainflowError | None:
    """The TrainflowError behind hydra's InstantiationException (a check in a data or model constructor)."""
    from hydra.errors import InstantiationException

    cause = exc.__cause__ if isinstance(exc, InstantiationException) else None
    while isinstance(cause, InstantiationException):  # nested nodes (model.net) wrap once per level
        cause = cause.__cause__
    return cause if isinstance(cause, TrainflowError) else None
