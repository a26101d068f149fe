"""The one module that reaches into Optuna's private API; tests/test_sweep_optuna.py pins what it relies on.

pyproject pins Optuna to the minor version those tests passed on: a new
minor may move any of this without notice, and the tests say what broke.
Everything else in the sweep uses Optuna's public API (`Study.get_trials`,
`Study.tell`, `enqueue_trial`, `optuna.storages.fail_stale_trials`,
`RetryHeartbeatStaleTrialCallback`, `RDBStorage(heartbeat_interval=...)`).

Why no public API does these:

- `pop_waiting_trial`: the study's trial budget is its queue. `Study.ask()`
  pops a queued trial, but creates a new one when the queue is empty, which
  would overshoot `n_trials` on every worker that finds the queue empty.
  `Study._pop_waiting_trial_id` is the pop alone (a WAITING -> RUNNING
  change that one process wins); the study's trial cache is dropped first,
  as `ask()` does, so the sampler sees the trials other workers finished.
- `heartbeat_enabled`, `beating`: Optuna beats for a trial only inside
  `Study.optimize`; a trial run by claim and tell gets the same beat from the
  same private thread, which needs the trial's storage id and the storage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


def pop_waiting_trial(study: optuna.Study) -> optuna.Trial | None:
    """The first queued trial, now RUNNING for this caller; None when none is queued. Never creates one."""
    import optuna

    study._thread_local.cached_all_trials = None
    trial_id = study._pop_waiting_trial_id()
    return None if trial_id is None else optuna.Trial(study, trial_id)


def heartbeat_enabled(study: optuna.Study) -> bool:
    """The study's storage records trial heartbeats (an RDBStorage given `heartbeat_interval`)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)


def beating(study: optuna.Study, trial: optuna.Trial) -> Any:
    """A context in which a thread records the trial's heartbeat (a null one without a heartbeat)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial._trial_id, study._storage)
