"""A worker: take trials from the study until its queue is empty.

The sweep's own process is worker 0; with `sweep.n_workers > 1` it starts the
others as `python -m trainflow.sweep.worker <spec.json>`. Each worker process
imports torch once (~8 s here) and then runs many trials, so a trial costs
only its config composition and its training.

`python -m trainflow.sweep.worker --wait <spec.json>` is a pre-warmed worker:
the sweep starts it before opening its own run and study, so its imports
overlap the sweep's start-up; it waits for one line on stdin (JSON: the
changes to its environment that the sweep's run decides, such as tracking URI,
experiment and project root) before reading the spec, and ends quietly on end of input (the sweep stopped
before it needed the worker).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainflow.sweep.recovery import beating, fail_stale, heartbeat_enabled
from trainflow.sweep.space import SearchParam
from trainflow.sweep.study import StudySpec, claim_trial, open_storage, open_study
from trainflow.sweep.trial import TrialOutcome, TrialSetup, run_trial, tie_to_sweep
from trainflow.tracking.signals import DeferredSignals, exit_status, raise_interrupt

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

# How often a sweep with an empty queue looks at trials still running elsewhere.
WATCH_S = 1.0

_PACKAGE = (__package__ or "trainflow").split(".")[0]  # __name__ is __main__ under -m
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


def work(study: optuna.Study, setup: TrialSetup, storage_url: str | None,
         stop: Callable[[], bool] = lambda: False, watch: bool = False) -> list[TrialOutcome]:
    """Claim, run, tell, until the queue is empty (or `stop()`); an interrupted trial fails in Optuna.

    With a heartbeat, stale trials (a lost machine's) are failed and queued
    again before every claim. `watch` (the sweep's own process) keeps going
    while any machine still runs a trial, so a trial its machine loses comes
    back to a machine that is still there.
    """
    outcomes = []
    while not stop():
        fail_stale(study)
        # Held from the claim until the trial is tied to this sweep, and from the
        # end of training until the study has the outcome (see run_and_tell).
        with DeferredSignals() as signals:
            trial = claim_trial(study, storage_url)
            if trial is not None:
                with beating(study, trial._trial_id):
                    outcomes.append(run_and_tell(study, trial, setup, signals))
                continue
        if not (watch and _running_elsewhere(study)):
            break
        time.sleep(WATCH_S)
    return outcomes


def _running_elsewhere(study: optuna.Study) -> bool:
    """Trials still running on some machine, which may yet come back to the queue (heartbeat only)."""
    from optuna.trial import TrialState

    if not heartbeat_enabled(study):
        return False
    study._thread_local.cached_all_trials = None
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def run_and_tell(study: optuna.Study, trial: optuna.Trial, setup: TrialSetup,
                 signals: DeferredSignals) -> TrialOutcome:
    """One claimed trial, told to the study.

    A trial's run ends FINISHED before the study hears COMPLETE; a Ctrl-C in
    between would fail a finished trial, so it waits until the study is told.
    """
    from optuna.trial import TrialState

    try:
        tie_to_sweep(trial, setup)
        signals.release()
        outcome = run_trial(trial, setup, hold_signals=signals.hold)
    except BaseException:
        signals.hold()
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    state = TrialState[outcome.state]
    study.tell(trial, outcome.value if state == TrialState.COMPLETE else None, state=state)
    print(describe(outcome, setup), flush=True)
    return outcome


def describe(outcome: TrialOutcome, setup: TrialSetup) -> str:
    value = f" {setup.metric}={outcome.value:.6g}" if outcome.value is not None else ""
    why = f" ({outcome.error})" if outcome.error else ""
    return f"trial {outcome.number} {outcome.state}{value} run {outcome.run_id} worker {setup.worker}{why}"


def limit_threads(threads: int | None) -> None:
    """One torch thread per worker when workers share the cores: no oversubscription."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_worker(spec: WorkerSpec) -> list[TrialOutcome]:
    """A worker process: open the study with its own sampler seed, then work."""
    limit_threads(spec.threads)
    study = open_study(spec.study, open_storage(spec.study), worker=spec.setup.worker)
    parent = spec.parent_pid
    return work(study, spec.setup, spec.study.storage, stop=lambda: parent is not None and os.getppid() != parent)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    # SIGTERM between trials unwinds like Ctrl-C, so a claimed trial is told FAIL.
    signal.signal(signal.SIGTERM, raise_interrupt)
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


def exit_now(code: int) -> None:
    """Skip the interpreter's teardown of torch, Lightning and MLflow (3-5 s here): the sweep waits on it.

    Everything a worker writes is synchronous (runs ended, trials told), so
    flushing the streams and logging is all that is left.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main(sys.argv[1:]))
