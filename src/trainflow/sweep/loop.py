"""The loop every worker runs, in the sweep's process and in worker processes: claim, run, tell.

A worker takes trials from the study's queue until it is empty; each trial
prints one line (its number, state, value, params and run), its whole output
goes to its run (see trial.run_trial). A trial interrupted by Ctrl-C or
SIGTERM (`scancel`) goes back to the queue before it fails (run_and_tell), so
another machine runs it, or the next sweep on the same storage does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from trainflow.sweep.optuna_adapter import beating, heartbeat_enabled
from trainflow.sweep.recovery import fail_stale, queue_again
from trainflow.sweep.study import claim_trial
from trainflow.sweep.trial import TrialOutcome, TrialSetup, is_interruption, run_trial, tie_to_sweep
from trainflow.tracking.signals import DeferredSignals, SignalsSince

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

# How often a sweep with an empty queue looks at trials still running elsewhere.
WATCH_S = 1.0


def work(study: optuna.Study, setup: TrialSetup, storage_url: str | None, max_retry: int,
         stop: Callable[[], bool] = lambda: False, watch: bool = False,
         signalled: SignalsSince | None = None) -> list[TrialOutcome]:
    """Claim, run, tell, until the queue is empty (or `stop()`); an interrupted trial is queued again, then fails.

    With a heartbeat, stale trials (a lost machine's) are failed and queued
    again before every claim. `watch` (the sweep's own process) keeps going
    while any machine still runs a trial or one waits in the queue, so a
    trial its machine loses or gives back comes to a machine that is still
    there. `max_retry`: how often one trial goes back to the queue. A stop
    signal whose interrupt was lost (tracking/signals.py) since `signalled`
    was made (the sweep's start) or since the loop began still ends the loop
    before the next claim.
    """
    outcomes = []
    signalled = signalled or SignalsSince()
    while not stop():
        signalled.raise_if_any()
        fail_stale(study)
        # Held from the claim until the trial is tied to this sweep, and from the
        # end of training until the study has the outcome (see run_and_tell).
        with DeferredSignals() as signals:
            trial = claim_trial(study, storage_url)
            if trial is not None:
                with beating(study, trial):
                    outcomes.append(run_and_tell(study, trial, setup, signals, max_retry))
                continue
        if not (watch and _unfinished_elsewhere(study)):
            break
        time.sleep(WATCH_S)
    return outcomes


def _unfinished_elsewhere(study: optuna.Study) -> bool:
    """Trials still running on some machine (they may come back to the queue), or queued since this
    machine found it empty: a stopped machine's trial, queued again (heartbeat only: a shared storage).

    `get_trials` reads the storage on every call (Optuna's trial cache serves only its samplers).
    """
    from optuna.trial import TrialState

    if not heartbeat_enabled(study):
        return False
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)))


def run_and_tell(study: optuna.Study, trial: optuna.Trial, setup: TrialSetup,
                 signals: DeferredSignals, max_retry: int) -> TrialOutcome:
    """One claimed trial, told to the study.

    A trial's run ends FINISHED before the study hears COMPLETE; a Ctrl-C in
    between would fail a finished trial, so it waits until the study is told.
    An interrupted trial (Ctrl-C, SIGTERM) was stopped, not wrong: it is
    queued again (up to `max_retry` times) before the study hears FAIL, so a
    machine watching the study never finds it with nothing running or queued.
    """
    from optuna.trial import TrialState

    try:
        tie_to_sweep(trial, setup)
        signals.release()
        outcome = run_trial(trial, setup, hold_signals=signals.hold)
    except BaseException as exc:
        signals.hold()
        if isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and is_interruption(exc)):
            _queue_interrupted(study, trial, max_retry)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    state = TrialState[outcome.state]
    study.tell(trial, outcome.value if state == TrialState.COMPLETE else None, state=state)
    print(describe(outcome, setup), flush=True)
    return outcome


def _queue_interrupted(study: optuna.Study, trial: optuna.Trial, max_retry: int) -> None:
    """The interrupted trial back in the queue with its params; a storage that fails here fails the trial only."""
    from optuna.trial import TrialState

    try:
        frozen = next(t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                      if t.number == trial.number)
        queued = queue_again(study, frozen, max_retry)
    except Exception as exc:
        log.warning("trial %d: interrupted, and could not be queued again: %s", trial.number, exc)
        return
    print(f"sweep: trial {trial.number} interrupted; failed, "
          f"{'queued again' if queued else 'no retry left (sweep.max_retry)'}", flush=True)


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
