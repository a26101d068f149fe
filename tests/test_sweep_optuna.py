"""What the sweep relies on in Optuna's private API (sweep/optuna_adapter.py), pinned.

pyproject pins Optuna to the minor version these passed on; when a new minor
breaks one, this says which behaviour went, not a sweep that hangs or overshoots.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from trainflow.sweep.optuna_adapter import beating, heartbeat_enabled, pop_waiting_trial


def _study(path: Path, heartbeat_s: int | None = None, sampler: Any = None) -> optuna.Study:
    storage = optuna.storages.RDBStorage(f"sqlite:///{path / 'optuna.db'}", heartbeat_interval=heartbeat_s,
                                         grace_period=2 if heartbeat_s else None)
    return optuna.create_study(study_name="pinned", storage=storage, load_if_exists=True, sampler=sampler)


def test_pop_takes_queued_trials_in_order_and_never_creates_one(tmp_path) -> None:
    study = _study(tmp_path)
    study.enqueue_trial({"x": 1.0})
    study.enqueue_trial({"x": 2.0})
    other = _study(tmp_path)  # a second worker on the same storage

    first, second = pop_waiting_trial(study), pop_waiting_trial(other)
    assert first is not None and second is not None
    assert (first.number, second.number) == (0, 1), "each worker gets a different queued trial"
    assert first.suggest_float("x", 0, 5) == 1.0 and second.suggest_float("x", 0, 5) == 2.0, "the queued params"
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING] * 2
    assert pop_waiting_trial(study) is None and len(study.get_trials()) == 2, "an empty queue adds no trial"


class CountingSampler(optuna.samplers.RandomSampler):
    """Records how many trials the study showed its sampler (Optuna's samplers read the cached list)."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.seen: list[int] = []

    def sample_independent(self, study: optuna.Study, trial: Any, name: str, distribution: Any) -> Any:
        self.seen.append(len(study._get_trials(deepcopy=False, use_cache=True)))
        return super().sample_independent(study, trial, name, distribution)


def test_a_popped_trial_samples_against_trials_other_workers_added(tmp_path) -> None:
    sampler = CountingSampler()
    study = _study(tmp_path, sampler=sampler)
    study.enqueue_trial({})
    trial = pop_waiting_trial(study)
    assert trial is not None
    trial.suggest_float("x", 0, 1)
    other = _study(tmp_path)
    other.enqueue_trial({})
    other.enqueue_trial({})
    trial = pop_waiting_trial(study)
    assert trial is not None
    trial.suggest_float("x", 0, 1)
    assert sampler.seen == [1, 3], "the trial cache was dropped before the pop"


def test_get_trials_reads_the_storage_every_time(tmp_path) -> None:
    """The sweep watches other machines' trials with get_trials alone (no cache to drop)."""
    study = _study(tmp_path)
    assert study.get_trials() == []
    _study(tmp_path).enqueue_trial({})
    assert len(study.get_trials(deepcopy=False)) == 1


def test_heartbeat_enabled_only_for_a_storage_given_an_interval(tmp_path) -> None:
    (tmp_path / "beat").mkdir()
    (tmp_path / "plain").mkdir()
    assert heartbeat_enabled(_study(tmp_path / "beat", heartbeat_s=1))
    assert not heartbeat_enabled(_study(tmp_path / "plain"))
    assert not heartbeat_enabled(optuna.create_study())


def test_a_beating_trial_is_not_stale_and_a_silent_one_is(tmp_path) -> None:
    study = _study(tmp_path, heartbeat_s=1)
    study.enqueue_trial({})
    study.enqueue_trial({})
    alive, silent = pop_waiting_trial(study), pop_waiting_trial(study)
    assert alive is not None and silent is not None
    with beating(study, silent):
        pass  # one beat, then silence
    with beating(study, alive):
        time.sleep(3.5)  # past the 2 s grace for the silent one; the live one beats every second
        optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {alive.number: TrialState.RUNNING, silent.number: TrialState.FAIL}


def test_pyproject_pins_the_minor_version_these_tests_ran_on() -> None:
    major, minor = (int(n) for n in optuna.__version__.split(".")[:2])
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'"optuna>={major}.{minor},<{major}.{minor + 1}"' in pyproject
