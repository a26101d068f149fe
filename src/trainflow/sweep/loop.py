"""The loop every worker runs, in the sweep's process and in worker processes: claim, run, tell.

A worker takes trials from the study's queue until it is empty; each trial
prints one line (its number, state, value, params and run), its whole output
goes to its run (see trial.run_trial).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from trainflow.sweep.optuna_adapter import beating, heartbeat_enabled
from trainflow.sweep.recovery import fail_stale
from trainflow.sweep.study import claim_trial
from trainflow.sweep.trial import TrialOutcome, TrialSetup, run_trial, tie_to_sweep

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

# How often a sweep with an empty queue looks at trials still running elsewhere.
WATCH_S = 1.0


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
                with beating(study, trial):
                    outcomes.append(run_and_tell(study, trial, setup, signals))
                continue
        if not (watch and _running_elsewhere(study)):
            break
        time.sleep(WATCH_S)
    return outcomes


def _running_elsewhere(study: optuna.Study) -> bool:
    """Trials still running on some machine, which may yet come back to the queue (heartbeat only).

    `get_trials` reads the storage on every call (Optuna's trial cache serves only its samplers).
    """
    from optuna.trial import TrialState

    if not heartbeat_enabled(study):
        return False
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


class DeferredSignals:
    """SIGINT and SIGTERM held (recorded, not acted on) while `holding`; the held one delivered after.

    Starts holding. `release()` delivers a held signal and lets the next ones
    through to the handlers found on entry; `hold()` holds again, taking the
    handlers back from any code (a step's run, Lightning) that installed its
    own meanwhile. On a clean exit the handlers found on entry come back and
    a held signal is sent again, so it acts exactly as it would have, only
    later. An exception already unwinding carries the interruption: a held
    signal is then dropped. Outside the main thread signals cannot be
    handled, and nothing is held.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.holding = True
        self.pending: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> DeferredSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        pending, self.pending = self.pending, None
        if pending is not None and exc_type is None:
            os.kill(os.getpid(), pending)

    def hold(self) -> None:
        self.holding = True
        for signum in self._previous:
            signal.signal(signum, self._on_signal)

    def release(self) -> None:
        self.holding = False
        pending, self.pending = self.pending, None
        if pending is not None:
            self._deliver(pending, None)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.holding:
            self.pending = self.pending or signum
        else:
            self._deliver(signum, frame)

    def _deliver(self, signum: int, frame: FrameType | None) -> None:
        handler = self._previous.get(signum)
        if callable(handler):
            handler(signum, frame)
        elif handler != signal.SIG_IGN:  # the default action: end the process by that signal
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def describe(outcome: TrialOutcome, setup: TrialSetup) -> str:
    """A trial's one console line: `trial 3 COMPLETE val/acc_best=0.93 lr=0.001 batch_size=64 · run <link>`."""
    value = f" {setup.metric}={outcome.value:.6g}" if outcome.value is not None else ""
    params = "".join(f" {k}={v:.4g}" if isinstance(v, float) else f" {k}={v}" for k, v in outcome.params.items())
    why = f" ({outcome.error.splitlines()[0]})" if outcome.error else ""
    worker = f" · worker {setup.worker}" if setup.worker else ""
    return f"trial {outcome.number} {outcome.state}{value}{params}{why} · run {outcome.link or '-'}{worker}"


def limit_threads(threads: int | None) -> None:
    """One torch thread per worker when workers share the cores: no oversubscription."""
    if threads:
        import torch

        torch.set_num_threads(threads)
