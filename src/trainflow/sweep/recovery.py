"""A machine lost or stopped mid-sweep: its trial runs again elsewhere, and no run stays RUNNING.

A machine killed outright (SIGKILL, power, a preempted node) cleans up
nothing. Two heartbeats in the study's database, which every machine shares,
tell the living from the dead:

- **trials**: Optuna's own heartbeat (`RDBStorage(heartbeat_interval=...)`):
  a thread beats for the trial while it trains. Before every claim, and
  while waiting for the study's last trials, each machine fails the trials
  whose beat is older than `grace_s` (`optuna.storages.fail_stale_trials`),
  which queues each again (Optuna's `RetryHeartbeatStaleTrialCallback`) and
  ends its MLflow run FAILED.
- **sweeps**: each sweep's process keeps a lease, the study user attr
  `trainflow.lease.<parent run id>` = the time of its last beat. A lease older
  than `grace_s` is a lost machine: its parent run is ended FAILED by whoever
  notices first, or by the next sweep that opens the study. Lease times are
  machine clocks: they must agree to well within `grace_s` (NTP does).

A machine stopped by a signal (Ctrl-C, SIGTERM: `scancel`, a node drained)
cleans up itself: its trial goes back to the queue the same way
(`queue_again`, called by loop.run_and_tell before the trial is told FAIL),
its runs end KILLED.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from trainflow.sweep.trial import ATTR_ERROR, ATTR_RUN, ATTR_SWEEP_RUN, ATTR_WORKER
from trainflow.tracking import tags as tag

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

log = logging.getLogger(__name__)

ENDED = -1.0  # a lease given back: the sweep ended on its own
# User attrs naming the runs of the machine that ran a trial; its retry gets its own.
MACHINE_ATTRS = (ATTR_RUN, ATTR_SWEEP_RUN, ATTR_WORKER, ATTR_ERROR)


class Lease:
    """This sweep's claim to be alive, renewed every `interval_s` by a daemon thread until `end()`."""

    def __init__(self, study: optuna.Study, run_id: str, interval_s: float) -> None:
        self.study = study
        self.key = tag.STUDY_LEASE_PREFIX + run_id  # a study user attr, not a run tag
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="trainflow-lease", daemon=True)

    def start(self) -> Lease:
        self.study.set_user_attr(self.key, time.time())
        self._thread.start()
        return self

    def end(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.study.set_user_attr(self.key, ENDED)
        except Exception as exc:  # the database may be what ended the sweep
            log.warning("could not give back the sweep's lease: %s", exc)

    def _renew(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.study.set_user_attr(self.key, time.time())
            except Exception as exc:  # a database blip: the next beat may get through
                log.warning("sweep lease not renewed: %s", exc)


class StaleTrialCallback:
    """Called by Optuna for each trial it failed as stale: queue it again, end its machine's runs."""

    def __init__(self, max_retry: int, grace_s: float, heartbeat_s: float) -> None:
        self.max_retry = max_retry
        self.grace_s = grace_s
        self.heartbeat_s = heartbeat_s

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        queued = queue_again(study, trial, self.max_retry)
        why = (f"trial {trial.number}: its machine was lost (no heartbeat for {self.grace_s:g}s); failed, "
               f"{'queued again' if queued else 'no retry left (sweep.max_retry)'}")
        print(f"sweep: {why}", flush=True)
        client = _client()
        run_id = trial.user_attrs.get(ATTR_RUN)
        if run_id:
            end_failed(client, str(run_id), why, trial=True)
        end_lost_sweeps(study, client, lease_lost_after(self.grace_s, self.heartbeat_s))


def lease_lost_after(grace_s: float, heartbeat_s: float) -> float:
    """How old a machine's lease is once its trial has been failed as stale: its machine is lost then.

    The trial's last beat is over grace_s old; the lease beats on the same
    interval, so it went silent about one beat later (a busy machine's thread
    lag can add to that: the sweep looks again when its watch ends). Waiting
    the full grace again could let the study end (nobody left to look) with
    the lost machine's parent still RUNNING.
    """
    return grace_s - heartbeat_s


def queue_again(study: optuna.Study, trial: FrozenTrial, max_retry: int) -> bool:
    """The trial as a new WAITING one with the same params, unless it was retried `max_retry` times already.

    Optuna's own retry (`RetryHeartbeatStaleTrialCallback`: the params, the
    `failed_trial` and `retry_history` system attrs that count the retries),
    given the trial without the user attrs that name its machine's runs: the
    retry belongs to whichever machine claims it. True if it was queued.
    """
    import copy
    import warnings

    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    retried = len(trial.system_attrs.get("retry_history", []))  # the callback's own count of earlier tries
    fresh = copy.deepcopy(trial)
    fresh.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in MACHINE_ATTRS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, fresh)
    return retried < max_retry


def end_lost_sweeps(study: optuna.Study, client: Any, grace_s: float) -> list[str]:
    """Sweeps of this study whose lease is older than `grace_s`: parent run FAILED, lease closed."""
    now = time.time()
    lost = []
    for key, beat in study.user_attrs.items():
        if not key.startswith(tag.STUDY_LEASE_PREFIX) or not isinstance(beat, int | float) or beat == ENDED:
            continue
        if now - float(beat) <= grace_s:
            continue
        run_id = key.removeprefix(tag.STUDY_LEASE_PREFIX)
        end_failed(client, run_id, f"sweep machine lost: no heartbeat for {now - float(beat):.0f}s "
                                   f"(grace {grace_s:g}s); its trials were failed and queued again")
        study.set_user_attr(key, ENDED)
        lost.append(run_id)
    return lost


def end_failed(client: Any, run_id: str, why: str, trial: bool = False) -> None:
    """A lost machine's run, still RUNNING: FAILED with the reason; a run that ended stays as it is."""
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return
        client.set_tag(run_id, tag.ERROR, why)
        if trial:
            client.set_tag(run_id, tag.TRIAL_STATE, "FAIL")
        client.set_terminated(run_id, "FAILED")
        print(f"sweep: run {run_id} ended FAILED: {why}", flush=True)
    except Exception as exc:
        log.warning("could not end lost run %s: %s", run_id, exc)


def fail_stale(study: optuna.Study) -> None:
    """Optuna's stale-trial check (a no-op without a heartbeat), quiet about being experimental."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()
