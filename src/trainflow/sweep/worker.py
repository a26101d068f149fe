"""Worker processes: `python -m trainflow.sweep.worker <spec.json>` takes trials from the study.

The sweep's own process is worker 0; with `sweep.n_workers > 1` it starts
workers 1..n-1 as processes (`start_processes`), each with one torch thread,
in a session of its own so that a terminal's Ctrl-C reaches only the sweep,
which forwards it once (`stop_workers`). Each imports torch once and then
runs many trials (loop.work), so a trial costs only its composition and its
training.

`python -m trainflow.sweep.worker --wait <spec.json>` is a pre-warmed worker:
steps/sweep.py starts it right after composing its config (`prewarm_workers`),
before it opens its run and study, so the worker's imports overlap the
sweep's start-up. It imports what every trial needs, then waits for one line
on stdin (JSON: the changes to its environment that the sweep's run decides:
tracking URI, experiment, project root) before reading its spec, and ends
quietly on end of input (the sweep stopped before it needed the worker).

What pre-warming saves (issue 21 item 6), measured with `bench/sweep.py
--trials 4 --epochs 10 --rounds 3 --baseline <this checkout without the
prewarm_workers call>` on the shared 2-core machine (2026-12-07, load 10-19,
before and after the split into worker/loop/summary): worker 1 opened its
first trial a median 14.3 s (before) and 19.8 s (after) after the sweep's run
with pre-warming, 27.3 s and 41.0 s without; whole sweep 76.3 s against
96.2 s, 142.7 s against 156.5 s. Well over a second, so it stays.
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainflow.fast_exit import exit_now
from trainflow.sweep.loop import limit_threads, work
from trainflow.sweep.space import SearchParam
from trainflow.sweep.study import StudySpec, open_storage, open_study
from trainflow.sweep.trial import TrialOutcome, TrialSetup
from trainflow.tracking.ranks import LEADER_RUN_ENV
from trainflow.tracking.signals import STOP_SIGNALS, exit_status, raise_interrupt

log = logging.getLogger(__name__)

# How long interrupted workers get to record their trial before they are killed.
STOP_GRACE_S = 60.0
_PACKAGE = (__package__ or "trainflow").split(".")[0]  # __name__ is __main__ under -m
_MODULE = f"{_PACKAGE}.sweep.worker"
# argv[0] of a pre-warmed worker: import first, then wait for the sweep's word on stdin.
WAIT_FLAG = "--wait"
# What every trial of a classification sweep imports: what a pre-warmed worker imports while it waits.
TRIAL_IMPORTS = ("torch", "lightning", "mlflow", "optuna", "optuna_integration.pytorch_lightning",
                 f"{_PACKAGE}.training.train", f"{_PACKAGE}.models.classifier")


@dataclass
class WorkerSpec:
    """Everything a worker process needs, as JSON: it composes its trials itself."""

    study: StudySpec
    setup: TrialSetup
    threads: int | None  # 1 when several workers share the machine's cores
    parent_pid: int | None = None  # a worker whose sweep died stops after its trial

    def to_json(self) -> str:
        data = asdict(self)
        data["setup"]["output_dir"] = str(self.setup.output_dir)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        setup = dict(data["setup"])
        setup["output_dir"] = Path(setup["output_dir"])
        setup["space"] = [SearchParam(**{**p, "choices": tuple(p["choices"])}) for p in setup["space"]]
        return cls(study=StudySpec(**data["study"]), setup=TrialSetup(**setup), threads=data["threads"],
                   parent_pid=data["parent_pid"])


def start_processes(study: StudySpec, setups: list[TrialSetup], folder: Path,
                    env: dict[str, str]) -> list[subprocess.Popen]:
    """One worker process per setup (workers 1..n-1; the sweep's process is worker 0).

    Workers pre-warmed by `prewarm_workers` are handed their environment; the
    rest start now. If starting one fails (or Ctrl-C lands meanwhile), those
    already started are killed: nothing would stop them otherwise.
    """
    folder.mkdir(parents=True, exist_ok=True)
    warm, procs = _take_warm_workers(), []
    try:
        for setup in setups:
            spec = WorkerSpec(study=study, setup=setup, threads=1, parent_pid=os.getpid())
            procs.append(_start_worker(spec, folder / f"worker-{setup.worker}.json", env, warm))
    except BaseException:
        kill_workers([*procs, *(w.proc for w in warm.values())])
        raise
    kill_workers([w.proc for w in warm.values()])  # pre-warmed for a spec this sweep does not have
    return procs


def _start_worker(spec: WorkerSpec, spec_path: Path, env: dict[str, str],
                  warm: dict[Path, WarmWorker]) -> subprocess.Popen:
    spec_path.write_text(spec.to_json())
    ready = warm.pop(spec_path, None)
    if ready is not None and ready.start(env):
        return ready.proc
    # Own session: a terminal's Ctrl-C reaches only the sweep, which forwards
    # it once (stop_workers), so no worker sees two signals.
    return subprocess.Popen([sys.executable, "-m", _MODULE, str(spec_path)], env=env,
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

    A worker's start-up is its imports (torch, Lightning, MLflow); started
    only once the sweep's run and study exist, each began its first trial that
    much after the sweep's own. Started here they import while the sweep
    starts, and `start_processes` sends each its environment (the run's
    tracking URI and experiment) on stdin. Workers this process never needs
    (its config or run fails first) are killed at exit, or read end of input
    and end.
    """
    n_workers = OmegaConf.select(cfg, "sweep.n_workers")
    if not isinstance(n_workers, int) or n_workers <= 1 or _WARM:
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for key in ("MLFLOW_RUN_ID", LEADER_RUN_ENV):
        env.pop(key, None)
    atexit.register(_discard_warm_workers)
    for index in range(1, n_workers):
        spec_path = output_dir / "workers" / f"worker-{index}.json"
        proc = subprocess.Popen([sys.executable, "-m", _MODULE, WAIT_FLAG, str(spec_path)],
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


def worker_env(tracking_uri: str, experiment_id: str, root: Path) -> dict[str, str]:
    """The sweep's store, experiment and project root; not its run (trials are new runs)."""
    env = dict(os.environ)
    for key in ("MLFLOW_RUN_ID", LEADER_RUN_ENV):
        env.pop(key, None)
    env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_EXPERIMENT_ID=experiment_id,
               TRAINFLOW_ROOT=str(root), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
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


def run_worker(spec: WorkerSpec) -> list[TrialOutcome]:
    """A worker process: open the study with its own sampler seed, then work."""
    limit_threads(spec.threads)
    study = open_study(spec.study, open_storage(spec.study), worker=spec.setup.worker)
    parent = spec.parent_pid
    return work(study, spec.setup, spec.study.storage, spec.study.max_retry,
                stop=lambda: parent is not None and os.getppid() != parent)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    # SIGTERM unwinds like Ctrl-C, so a claimed trial is queued again and told FAIL (loop.run_and_tell);
    # both are counted, so one whose interrupt is lost still ends the loop (tracking/signals.py).
    for signum in STOP_SIGNALS:
        signal.signal(signum, raise_interrupt)
    try:
        if argv[0] == WAIT_FLAG:
            argv = argv[1:]
            if not await_start():
                return 0
        run_worker(WorkerSpec.from_json(Path(argv[0]).read_text()))
    except KeyboardInterrupt:
        return exit_status()
    return 0


def await_start() -> bool:
    """Import what every trial needs, then wait for the sweep; False when it will never come.

    The imports are the worker's start-up cost (seconds of torch, Lightning,
    MLflow, Optuna): paid while the sweep opens its run and study instead of
    after. The environment it sends is read only after these imports, none of
    which reads it.
    """
    for module in TRIAL_IMPORTS:
        importlib.import_module(module)
    line = sys.stdin.readline()
    if not line.strip():
        return False
    changes = json.loads(line)
    os.environ.update(changes["set"])
    for key in changes["unset"]:
        os.environ.pop(key, None)
    return True


if __name__ == "__main__":
    exit_now(main(sys.argv[1:]))
