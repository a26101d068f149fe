"""Ctrl-C and SIGTERM in a sweep: held over a trial's bookkeeping, and nothing left running or RUNNING.

Real signals, sent to this process with os.kill.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import optuna
import pytest

from helpers import TINY
from trainflow.sweep.driver import fail_orphans, start_workers, sweep_plan
from trainflow.sweep.trial import ATTR_SWEEP_RUN
from trainflow.tracking.run import step_run
from trainflow.tracking.signals import DeferredSignals


@pytest.fixture
def sigterm_calls() -> Iterator[list[int]]:
    """SIGTERM handled by a recorder for the test, the previous handler back after."""
    calls: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        calls.append(signum)

    previous = signal.signal(signal.SIGTERM, record)
    yield calls
    signal.signal(signal.SIGTERM, previous)


def test_a_held_ctrl_c_interrupts_only_after_the_block() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), DeferredSignals():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("bookkeeping")
    assert done == ["bookkeeping"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_held_sigterm_reaches_the_previous_handler_once_after_the_block(sigterm_calls) -> None:
    handler = signal.getsignal(signal.SIGTERM)
    with DeferredSignals():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert sigterm_calls == []
    assert sigterm_calls == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is handler


def test_release_delivers_the_held_signal_and_lets_the_next_through(sigterm_calls) -> None:
    with DeferredSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        signals.release()
        assert sigterm_calls == [signal.SIGTERM]
        os.kill(os.getpid(), signal.SIGTERM)
        assert sigterm_calls == [signal.SIGTERM] * 2
        signals.hold()
        os.kill(os.getpid(), signal.SIGTERM)
        assert sigterm_calls == [signal.SIGTERM] * 2
    assert sigterm_calls == [signal.SIGTERM] * 3


def test_hold_takes_the_handler_back_from_code_that_installed_its_own(sigterm_calls) -> None:
    """As a trial's step_run does: its handler is live during training, not over the run's end."""
    step_handler_calls: list[int] = []
    with DeferredSignals() as signals:
        signals.release()
        signal.signal(signal.SIGTERM, lambda signum, frame: step_handler_calls.append(signum))
        signals.hold()
        os.kill(os.getpid(), signal.SIGTERM)
        assert sigterm_calls == [] and step_handler_calls == []
    assert sigterm_calls == [signal.SIGTERM] and step_handler_calls == []


def test_an_exception_already_unwinding_drops_the_held_signal(sigterm_calls) -> None:
    with pytest.raises(ValueError), DeferredSignals():
        os.kill(os.getpid(), signal.SIGTERM)
        raise ValueError("the interruption is already on its way")
    assert sigterm_calls == []


def test_outside_the_main_thread_nothing_is_held() -> None:
    handlers: list[object] = []

    def enter() -> None:
        with DeferredSignals() as signals:
            signals.hold()
            handlers.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert handlers == [signal.default_int_handler]


def test_orphans_without_attrs_fail_only_in_the_sweeps_own_storage(
        compose, tmp_path, sqlite_uri, tracking_env) -> None:
    """A trial claimed but never tied to its sweep (worker killed): another machine's, unless the storage is ours."""
    tracking_env(sqlite_uri)
    cfg = compose("train", TINY, output_dir=tmp_path)
    study = optuna.create_study()
    ours, unattributed, foreign = (study.ask() for _ in range(3))
    foreign.set_user_attr(ATTR_SWEEP_RUN, "another-sweep")
    with step_run("train", cfg) as run:
        ours.set_user_attr(ATTR_SWEEP_RUN, run.run_id)
        fail_orphans(study, run, own_storage=False)
        assert [t.state.name for t in study.trials] == ["FAIL", "RUNNING", "RUNNING"]
        fail_orphans(study, run, own_storage=True)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL", "RUNNING"]
    assert unattributed.number == 1


def _processes_running(needle: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and needle in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_workers_already_started_are_killed_when_starting_the_next_fails(
        compose, tmp_path, sqlite_uri, tracking_env) -> None:
    tracking_env(sqlite_uri)
    cfg = compose("sweep", [*TINY, "hparams_search=digits_optuna", "sweep.n_workers=3"], output_dir=tmp_path)
    (tmp_path / "workers" / "worker-2.json").mkdir(parents=True)  # worker 2's spec cannot be written
    with step_run("sweep", cfg) as run:
        with pytest.raises(IsADirectoryError):
            start_workers(sweep_plan(cfg, tmp_path, run.run_id), run)
        assert (tmp_path / "workers" / "worker-1.json").exists()
        assert _processes_running(str(tmp_path / "workers")) == []
