"""Ctrl-C and SIGTERM in a sweep: held over a trial's bookkeeping, the trial queued again, nothing left RUNNING.

Real signals, sent to this process with os.kill.
"""

from __future__ import annotations

import importlib
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from types import FrameType

import optuna
import pytest
from mlflow import MlflowClient

from helpers import TINY, new_sqlite_store
from trainflow.sweep.driver import fail_orphans, run_sweep, start_workers, sweep_plan
from trainflow.sweep.trial import ATTR_RUN, ATTR_SWEEP_RUN
from trainflow.tracking import tags as tag
from trainflow.tracking.run import step_run
from trainflow.tracking.signals import (
    DeferredSignals,
    SignalsSince,
    interruption,
    raise_interrupt,
)
from trainflow.training.faults import SignalWhenCollected


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


def test_a_signal_whose_interrupt_python_dropped_is_still_raised_at_the_next_check(monkeypatch) -> None:
    dropped: list = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)  # where Python sends what it drops
    previous = signal.signal(signal.SIGINT, raise_interrupt)
    try:
        before = SignalsSince()
        SignalWhenCollected(signal.SIGINT)  # collected at once; the interrupt never reaches this frame
        assert [type(d.exc_value) for d in dropped] == [KeyboardInterrupt]
        SignalsSince().raise_if_any()  # a mark made after the signal sees none
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            before.raise_if_any()
        assert interruption() == signal.SIGINT, "the exit status names the signal"
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def sigint_at_import(tmp_path, monkeypatch) -> Iterator[Callable[[int], str]]:
    """A module that sends this process `n` SIGINTs while it is being imported; SIGINT raises as in a step."""
    names: list[str] = []

    def module(n: int) -> str:
        names.append(f"sigint_{n}_at_import")
        kills = "os.kill(os.getpid(), signal.SIGINT)\n" * n
        (tmp_path / f"{names[-1]}.py").write_text(f"import os\nimport signal\n\n{kills}WHOLE = True\n")
        return names[-1]

    monkeypatch.syspath_prepend(str(tmp_path))
    previous = signal.signal(signal.SIGINT, raise_interrupt)
    yield module
    signal.signal(signal.SIGINT, previous)
    for name in names:
        sys.modules.pop(name, None)


def test_ctrl_c_inside_an_import_unwinds_after_it_with_the_module_whole(sigint_at_import) -> None:
    """An import cut short leaves what it imported half-initialised (torch._dynamo, triton): importing them
    again fails or aborts the process. The signal is held until the import returns."""
    name = sigint_at_import(1)
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        importlib.import_module(name)
        time.sleep(10)  # where the signal, delivered again, lands
    assert sys.modules[name].WHOLE
    assert interruption() == signal.SIGINT


def test_a_second_ctrl_c_inside_an_import_unwinds_at_once(sigint_at_import) -> None:
    """Ctrl-C twice stops even a process stuck in an import; no delivery of the first comes after."""
    name = sigint_at_import(2)
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        importlib.import_module(name)
    assert name not in sys.modules, "unwound inside the import"
    time.sleep(0.2)  # a delivery of the first signal would raise here


def test_ctrl_c_inside_a_database_call_unwinds_after_it_and_leaves_the_store_unlocked(tmp_path) -> None:
    """Interrupted between a query and the reading of its rows, an embedded store stays locked: the statement
    lives on in the unwinding stack. The run could not be ended KILLED (its write waits out the busy timeout
    and fails), nor could a sweep's other processes write. The signal lands once the call has returned."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    uri = new_sqlite_store(tmp_path)
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("locks")).info.run_id
    sent: list[str] = []

    def mid_query(conn, cursor, statement: str, *_: object) -> None:  # the query ran; its rows are unread
        if statement.lstrip().startswith("SELECT") and not sent:
            sent.append(statement)
            os.kill(os.getpid(), signal.SIGINT)

    event.listen(Engine, "after_cursor_execute", mid_query)
    previous = signal.signal(signal.SIGINT, raise_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            client.set_tag(run_id, "after", "the call")
            time.sleep(10)  # where the held signal lands
    finally:
        signal.signal(signal.SIGINT, previous)
        event.remove(Engine, "after_cursor_execute", mid_query)
    assert sent, "no query ran"
    with closing(sqlite3.connect(tmp_path / "mlflow.db", timeout=1)) as other, other:
        other.execute("UPDATE runs SET status = 'KILLED' WHERE run_uuid = ?", (run_id,))  # "database is locked"
    assert client.get_run(run_id).data.tags["after"] == "the call"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt
def test_a_sweep_whose_ctrl_c_was_dropped_mid_trial_claims_no_other_trial(
        compose, tmp_path, sqlite_uri, tracking_env) -> None:
    """Ctrl-C landing in a finalizer (the garbage collector's SQLAlchemy callbacks) is dropped by Python.
    Here it lands after the trial's last batch, where no batch check sees it (as in the sweep's start-up):
    the trial ends COMPLETE, and the sweep ends KILLED, exit 130, before claiming the next."""
    tracking_env(sqlite_uri)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    dropped = ("+callbacks.fault={_target_:trainflow.training.faults.SignalAt,moment:train_epoch_end,"
               "signal_name:SIGINT,in_finalizer:true}")
    cfg = compose("sweep", [*TINY, "hparams_search=digits_optuna", "sweep.n_trials=3", "sweep.pruner=null",
                            "test=false", f"sweep.storage={storage}", "sweep.study_name=dropped", dropped],
                  output_dir=tmp_path)
    with pytest.raises(SystemExit) as stopped, step_run("sweep", cfg) as run:
        run_sweep(cfg, run)
    assert stopped.value.code == 128 + signal.SIGINT
    study = optuna.load_study(study_name="dropped", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "WAITING", "WAITING"]
    assert MlflowClient(sqlite_uri).get_run(run.run_id).info.status == "KILLED"


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


def test_a_trial_stopped_by_sigterm_is_queued_again_and_the_next_sweep_runs_it(
        compose, tmp_path, sqlite_uri, tracking_env) -> None:
    """The local Ctrl-C / SIGTERM story: nothing is lost, and running the sweep again on its storage
    finishes the study with its n_trials, the stopped trial's params included."""
    tracking_env(sqlite_uri)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = [*TINY, "hparams_search=digits_optuna", "sweep.n_trials=2", "sweep.pruner=null",
             f"sweep.storage={storage}", "sweep.study_name=stopped"]
    # SIGTERM from inside the first trial's fit, as `scancel` sends it
    sigterm = "+callbacks.fault={_target_:trainflow.training.faults.SignalAt,moment:train_batch,batch:1}"
    cfg = compose("sweep", [*sweep, sigterm], output_dir=tmp_path / "first")
    with pytest.raises(SystemExit) as stopped, step_run("sweep", cfg) as first:
        run_sweep(cfg, first)
    assert stopped.value.code == 128 + signal.SIGTERM

    client = MlflowClient(sqlite_uri)
    study = optuna.load_study(study_name="stopped", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING", "WAITING"]
    failed, retry = study.trials[0], study.trials[2]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == failed.params
    assert ATTR_RUN not in retry.user_attrs and ATTR_SWEEP_RUN not in retry.user_attrs, "the retry is no one's yet"
    stopped_run = client.get_run(failed.user_attrs[ATTR_RUN])
    assert (stopped_run.info.status, stopped_run.data.tags[tag.TRIAL_STATE]) == ("KILLED", "FAIL")
    assert client.get_run(first.run_id).info.status == "KILLED"

    cfg = compose("sweep", sweep, output_dir=tmp_path / "again")
    with step_run("sweep", cfg) as again:
        result = run_sweep(cfg, again)
    study = optuna.load_study(study_name="stopped", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"], "nothing queued on top"
    assert result.states == {"FAIL": 1, "COMPLETE": 2}
    assert study.trials[2].params == failed.params
    rerun = client.get_run(study.trials[2].user_attrs[ATTR_RUN])
    assert rerun.info.status == "FINISHED" and rerun.data.tags["mlflow.parentRunId"] == again.run_id
