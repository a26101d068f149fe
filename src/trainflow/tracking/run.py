"""The step contract: one tracked MLflow run around one step.

Every step (prepare_data, train, evaluate, predict, sweep, main, and each
sweep trial) goes through `step_run`, which reads top to bottom:

1. where the run logs (`_tracking_target`), checked before any run exists;
2. which run it is (`placement.place_run`: attached, resumed, nested or new;
   rank zero's on other DDP ranks), with signals only noted while it is made;
3. what the run records about itself (`_log_run_identity`);
4. the step's body, then how it ends (`outcome.outcome_of`): FINISHED,
   FAILED with the error on the run, or KILLED by SIGINT/SIGTERM, exiting
   non-zero for the last two. Hydra's job log goes onto the run whatever the
   status, so a run that failed on another machine can be read in the UI.

Who else starts and ends runs, each for one reason:
- runs a step attaches to are made by `mlflow run` / `mlflow.projects.run`
  (pipeline.main launches its child steps so), by pipeline.in_process with
  MLflow's own project-runner functions, and by pipeline.reproduce when it
  was not launched by `mlflow run`;
- placement ends FINISHED the run `mlflow run -P resume=...` made, once the
  work moved into the resumed run;
- sweep.trial sets each trial run's status from its Optuna state;
  sweep.driver fails trial runs its workers could not finish, and
  sweep.recovery a lost machine's sweep run;
- cli fails the run `mlflow run` made when the config does not compose,
  pipeline.reproduce its run when it refuses or its step died, and
  tracking.sync a run whose outage upload came too late.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from omegaconf import DictConfig, OmegaConf

from trainflow.config.extras import apply_extras
from trainflow.config.hashing import VOLATILE_KEYS, config_hash
from trainflow.config.redact import is_secret_key, mask_secrets, redact, redact_overrides, secret_values
from trainflow.config.run_paths import without_run_paths
from trainflow.errors import TrainflowError
from trainflow.project import project_root
from trainflow.tracking import tags as tag
from trainflow.tracking.clock import step_age_s
from trainflow.tracking.codeversion import CodeVersion, code_version
from trainflow.tracking.console import run_link, step_summary
from trainflow.tracking.job_log import job_log, log_job_log, warnings_logged
from trainflow.tracking.lockfile import lock_digest
from trainflow.tracking.metrics import metric_entities
from trainflow.tracking.outcome import interrupted_line, outcome_of
from trainflow.tracking.params import flatten
from trainflow.tracking.placement import PlacedRun, follow_leader, place_run
from trainflow.tracking.ranks import LEADER_RUN_ENV, is_follower, job_key
from trainflow.tracking.run_name import run_name
from trainflow.tracking.signals import (
    Handlers,
    SignalsSince,
    exit_status,
    interruption,
    note_only,
    note_signals,
    raise_on_signals,
    restore,
)
from trainflow.tracking.uri import bound_http_client, check_reachable, resolve_tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


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
    # Stop signals since the step began: a sweep or pipeline checks it before each trial or step.
    signalled: SignalsSince = field(default_factory=SignalsSince, repr=False)

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


@contextmanager
def step_run(step: str, cfg: DictConfig, output_dir: Path | None = None,
             parent_run_id: str | None = None) -> Iterator[StepRun]:
    """Attach or start, tag, log config; end with the right status.

    `parent_run_id`: start a new run nested under that one (a sweep's trial,
    possibly in another process), never attaching to `MLFLOW_RUN_ID`.
    """
    import mlflow

    root = project_root()
    output_dir = output_dir or _hydra_output_dir() or Path(tempfile.mkdtemp(prefix=f"trainflow-{step}-"))
    if is_follower():
        yield _follower_run(step, cfg, root, output_dir)
        return
    uri, code, tree = _tracking_target(mlflow, cfg, root, output_dir)
    resolved, name = _resolved(cfg), default_run_name(step)
    signalled = SignalsSince()
    handlers = note_signals()  # raised midway, a signal could leave a RUNNING run
    ctx, placed = _placed_run(mlflow, step, cfg, resolved, name, root, uri, code, output_dir, parent_run_id, handlers)
    ctx.signalled = signalled
    status = "FAILED"
    try:
        raise_on_signals(handlers)
        started = step_age_s()
        if started is not None:
            ctx.timings["time/startup_s"] = started
        _log_run_identity(ctx, cfg, resolved, name, tree, placed)
        with warnings_logged(job_log(output_dir)):
            yield ctx
        ctx.log_timings()
        status = "FINISHED"
        _print_summary(ctx, started)
    except BaseException as exc:
        ending = outcome_of(exc, step, ctx.run_id)
        status = ending.status
        if ending.reason:
            _record_error(ctx, ending.reason, ending.trace)
        if ending.exit_code is None:
            raise
        _exit(ending.line, ending.exit_code)
    finally:
        _close(mlflow, ctx, handlers, status)


def _tracking_target(mlflow: Any, cfg: DictConfig, root: Path, output_dir: Path) -> tuple[str, CodeVersion, str | None]:
    """(tracking URI, code version, printed config tree), checked before any run exists: a bad one exits 1."""
    try:
        tree = apply_extras(cfg, output_dir)
        uri = resolve_tracking_uri(cfg.tracking.get("uri"), root)
        bound_http_client(cfg.tracking.connect_timeout_s, cfg.tracking.http_max_retries)
        check_reachable(uri, cfg.tracking.connect_timeout_s)
        mlflow.set_tracking_uri(uri)
        return uri, code_version(root), tree
    except TrainflowError as exc:
        _exit(str(exc), 1)


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data, resolved; secrets still in (redacted where it is logged)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    return {str(k): v for k, v in plain.items()}


def _placed_run(mlflow: Any, step: str, cfg: DictConfig, resolved: dict[str, Any], name: str, root: Path, uri: str,
                code: CodeVersion, output_dir: Path, parent_run_id: str | None,
                handlers: Handlers) -> tuple[StepRun, PlacedRun]:
    """The run this step logs into (placement.py), or an exit naming why there is none."""
    wanted = _params(cfg, resolved)
    may_differ = [k for k, v in wanted.items() if _run_local(k, v, output_dir)] if cfg.get("resume") else []
    try:
        placed = place_run(mlflow, step, cfg, root, uri, name, parent_run_id, wanted, may_differ)
    except BaseException as exc:
        restore(handlers)
        signum = interruption()
        if signum is not None:  # no run was made: the interruption is the news
            _exit(interrupted_line(step, signal.Signals(signum).name, None), exit_status())
        if isinstance(exc, TrainflowError):
            _exit(str(exc), 1)
        raise
    ctx = StepRun(step=step, run_id=placed.run_id, experiment_id=placed.experiment_id, tracking_uri=uri,
                  client=placed.client, root=root, output_dir=output_dir, code=code, attached=placed.attached)
    return ctx, placed


def _params(cfg: DictConfig, resolved: dict[str, Any]) -> dict[str, str]:
    """The config as params (secrets redacted), or none when `tracking.log_params=false`."""
    if not cfg.tracking.get("log_params", True):
        return {}
    plain = redact(resolved)
    assert isinstance(plain, dict)
    return without_run_paths(flatten({k: v for k, v in plain.items() if k != "hydra"}), cfg)


def _run_local(key: str, value: str, output_dir: Path) -> bool:
    """A key a resumed run may resolve to another value: where its files go, not what it computes."""
    return key == "resume" or key.split(".", 1)[0] in VOLATILE_KEYS or str(output_dir) in value


def _close(mlflow: Any, ctx: StepRun, handlers: Handlers, status: str) -> None:
    """The job log onto the run, then its status; the handlers found come back last."""
    os.environ.pop(LEADER_RUN_ENV, None)
    note_only(handlers)
    try:
        log_job_log(ctx.client, ctx.run_id, ctx.output_dir)
        active = mlflow.active_run()
        if active is not None and active.info.run_id == ctx.run_id:  # never a parent's run (nested trials)
            try:
                mlflow.end_run(status=status)
            except Exception as exc:
                log.warning("could not mark run %s: %s", status, exc)
    finally:
        restore(handlers)


def _follower_run(step: str, cfg: DictConfig, root: Path, output_dir: Path) -> StepRun:
    """A non-zero DDP rank: the leader's run, read-only, and quiet logs."""
    try:
        placed = follow_leader(cfg, root)
    except TrainflowError as exc:
        _exit(str(exc), 1)
    return StepRun(step=step, run_id=placed.run_id, experiment_id=placed.experiment_id, tracking_uri=str(
        resolve_tracking_uri(cfg.tracking.get("uri"), root)), client=placed.client, root=root,
        output_dir=output_dir, code=code_version(root), attached=True, leader=False)


def _print_summary(ctx: StepRun, started_age: float | None) -> None:
    """One line per finished step: its output URI and its run (tracking/console.py)."""
    now = step_age_s()
    took = now - started_age if now is not None and started_age is not None else None
    if ctx.leader:
        print(step_summary(ctx.step, ctx.outputs, run_link(ctx.tracking_uri, ctx.experiment_id, ctx.run_id), took),
              flush=True)


def _exit(line: str | None, code: int) -> NoReturn:
    """Leave the step with `error: <line>` on stderr and exit status `code`, no traceback."""
    if line:
        print(f"error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(code) from None


def _hydra_output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return None


def default_run_name(step: str) -> str:
    """`train-example-digits lr=0.01`: step, experiment, data and what was overridden (tracking/run_name.py)."""
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


def _log_run_identity(ctx: StepRun, cfg: DictConfig, resolved: dict[str, Any], name: str, tree: str | None,
                      placed: PlacedRun) -> None:
    """Tags, params and config artifacts: enough to rebuild the run.

    `placed.params`: the params on the run when it was placed (`mlflow run`
    logs each `-P`); `placed.new_params`: the rest, checked against them.
    """
    ctx.secrets = tuple(secret_values(resolved))
    redacted = redact(resolved)
    assert isinstance(redacted, dict)
    overrides = hydra_overrides()
    tags = {
        tag.STEP: ctx.step,
        tag.RUN_NAME: name,
        tag.GIT_COMMIT: ctx.code.commit or "",
        tag.GIT_DIRTY: str(ctx.code.dirty).lower(),
        tag.CODE_VERSION: ctx.code.id,
        tag.LOCK_DIGEST: lock_digest(ctx.root),
        tag.CONFIG_HASH: config_hash(redacted),
        tag.OVERRIDES: json.dumps(redact_overrides(overrides)),
        tag.USER_TAGS: ",".join(str(t) for t in cfg.get("tags") or []),
    }
    tags.update({f"tag.{t}": "true" for t in cfg.get("tags") or []})
    job = job_key()
    if job is not None:  # torchrun/srun: the other ranks find this run by it
        tags[tag.JOB] = job
    ctx.set_tags(tags)
    for key in placed.params:
        if is_secret_key(key):
            log.warning("param %s was logged by `mlflow run` before trainflow could redact it: "
                        "pass secrets through the environment, not -P", key)
    _log_params(ctx, placed.new_params)
    _log_text(ctx, OmegaConf.to_yaml(OmegaConf.create(redacted)), "config.yaml")
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
