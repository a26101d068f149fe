"""Several machines join one Optuna study in PostgreSQL: exactly n_trials, and a lost machine loses nothing.

Each "machine" is its own `steps/sweep.py` process with its own working
directory and sampler seed, against an `mlflow server` whose backend store is
PostgreSQL; the study lives in another database of the same PostgreSQL.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pytest

from helpers import ROOT, TINY, step_env
from servers import PostgresServer, proc_stat, proc_state
from trainflow.sweep.study import StudySpec, create_and_queue
from trainflow.tracking import tags as tag

if TYPE_CHECKING:
    from mlflow import MlflowClient

pytestmark = pytest.mark.slow

TRIAL = [*TINY, "hparams_search=digits_optuna", "sweep.n_workers=1", "sweep.pruner=null",
         "sweep.sampler.n_startup_trials=3"]


def mlflow_client(uri: str) -> MlflowClient:
    """MLflow's client, imported here: the six processes the first test spawns import this module, and only
    they would pay for MLflow's import at its top."""
    from mlflow import MlflowClient

    return MlflowClient(uri)


def _join(url: str, name: str, barrier: multiprocessing.synchronize.Barrier, queued: multiprocessing.Queue) -> None:
    barrier.wait()
    queued.put(create_and_queue(StudySpec(name=name, storage=url, direction="maximize"), 9, [])[1])


def test_machines_creating_one_study_at_the_same_instant_queue_it_once(postgres: PostgresServer) -> None:
    """Six processes released together on an empty database: its tables and the study are made once, 9 trials."""
    url = postgres.create_database("race")
    ctx = multiprocessing.get_context("spawn")
    barrier, queued = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_join, args=(url, "race", barrier, queued)) for _ in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    assert sorted(queued.get(timeout=5) for _ in procs) == [0, 0, 0, 0, 0, 9]
    study = optuna.load_study(study_name="race", storage=url)
    assert len(study.trials) == 9
    assert sorted(t.number for t in study.trials) == list(range(9))


def start_machine(index: int, server_uri: str, storage: str, study: str, workdir: Path,
                  extra: list[str]) -> subprocess.Popen:
    """One machine: its own folder, seed and process group (a SIGKILL takes all of it)."""
    folder = workdir / f"machine-{index}"
    folder.mkdir(parents=True)
    cmd = [sys.executable, str(ROOT / "steps/sweep.py"), *TRIAL, f"sweep.storage={storage}",
           f"sweep.study_name={study}", "sweep.n_trials=9", f"seed={index}", f"tags=[machine-{index}]",
           f"hydra.run.dir={folder / 'out'}", *extra]
    return subprocess.Popen(cmd, cwd=folder, env=step_env(server_uri), stdout=open(folder / "log", "w"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def finish(procs: list[subprocess.Popen], timeout_s: float = 420) -> list[int]:
    deadline = time.monotonic() + timeout_s
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(deadline - time.monotonic(), 1)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            codes.append(proc.wait())
    return codes


def logs(workdir: Path) -> str:
    return "\n".join(f"--- {p.parent.name}\n{p.read_text()[-3000:]}" for p in sorted(workdir.glob("machine-*/log")))


def study_runs(client: MlflowClient, study: str) -> tuple[dict[str, object], list]:
    """The study's parent runs by machine tag, and its trial runs."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`{tag.SWEEP_STUDY}` = '{study}'", max_results=1000)
    parents = {next(k.removeprefix("tag.") for k in r.data.tags if k.startswith("tag.machine-")): r
               for r in runs if r.data.tags.get(tag.STEP) == "sweep"}
    trials = [r for r in runs if r.data.tags.get(tag.STEP) == "train"]
    return parents, trials


def test_three_machines_started_together_run_exactly_n_trials_and_register_the_best_once(
        postgres: PostgresServer, pg_mlflow_server, tmp_path: Path) -> None:
    storage = postgres.create_database("study_three")
    client = mlflow_client(pg_mlflow_server.uri)
    extra = ["sweep.register_best=true", "registry.model_name=digits-three-machines"]
    procs = [start_machine(i, pg_mlflow_server.uri, storage, "three", tmp_path, extra) for i in range(3)]
    assert finish(procs) == [0, 0, 0], logs(tmp_path)

    study = optuna.load_study(study_name="three", storage=storage)
    assert len(study.trials) == 9
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    parents, trials = study_runs(client, "three")
    assert sorted(parents) == ["machine-0", "machine-1", "machine-2"]
    assert all(p.info.status == "FINISHED" for p in parents.values())
    numbers = sorted(int(r.data.tags[tag.TRIAL_NUMBER]) for r in trials)
    assert numbers == list(range(9)), "one trial run per trial, numbers unique across machines"
    parent_ids = {p.info.run_id for p in parents.values()}
    for trial in trials:
        assert trial.data.tags["mlflow.parentRunId"] in parent_ids
        assert trial.info.status in ("FINISHED", "KILLED")
        machine = next(k for k, p in parents.items() if p.info.run_id == trial.data.tags["mlflow.parentRunId"])
        assert trial.data.tags[tag.TRIAL_WORKER] == "0", machine  # each machine numbers its own workers from 0
    # every machine summarises the whole study: the same best, whichever machine found it
    best = study.best_trial
    assert {p.data.tags[tag.SWEEP_BEST_TRIAL] for p in parents.values()} == {str(best.number)}
    versions = client.search_model_versions("name = 'digits-three-machines'")
    assert len(versions) == 1, "the study's best is registered once, not once per machine"
    assert versions[0].run_id == best.user_attrs["mlflow_run_id"]
    assert {p.data.tags[tag.REGISTERED] for p in parents.values()} == {"models:/digits-three-machines/1"}
    # the storage URL's password reached no run
    for run in [*parents.values(), *trials]:
        assert PostgresServer.PASSWORD not in str(run.data.params) + str(run.data.tags)


def test_a_machine_killed_mid_trial_loses_nothing(postgres: PostgresServer, pg_mlflow_server, tmp_path: Path) -> None:
    """SIGKILL one machine while its trial trains: the others fail the stale trial, run it again, and
    end the lost machine's runs FAILED; the study ends with 9 finished trials and nothing RUNNING."""
    storage = postgres.create_database("study_killed")
    client = mlflow_client(pg_mlflow_server.uri)
    # trials long enough that the victim, started with the others, claims one before they empty the queue
    # (the survivors then watch the study until the lost trial comes back); beats every second, lost after
    # 4 s of silence
    extra = ["trainer.max_epochs=4", "trainer.limit_train_batches=20", "sweep.heartbeat_s=1", "sweep.grace_s=4"]
    # the victim's first trial stops itself mid-training (SIGSTOP, from inside the fit): it cannot finish
    # before the kill, however fast or slow this machine is
    victim = 0
    pause = ("+callbacks.fault={_target_:trainflow.training.faults.SignalAt,moment:train_batch,epoch:1,batch:2,"
             "signal_name:SIGSTOP}")
    procs = [start_machine(i, pg_mlflow_server.uri, storage, "killed", tmp_path,
                           [*extra, pause] if i == victim else extra) for i in range(3)]
    family = _stopped_mid_trial(procs, victim, tmp_path)
    os.killpg(procs[victim].pid, signal.SIGKILL)
    for pid in family:  # the machine is lost: every process on it, in its own session or not
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    codes = finish(procs)
    assert codes[victim] == -signal.SIGKILL
    assert [c for i, c in enumerate(codes) if i != victim] == [0, 0], logs(tmp_path)
    parents, trials = study_runs(client, "killed")
    [victim_trial] = [int(r.data.tags[tag.TRIAL_NUMBER]) for r in trials
                      if r.data.tags["mlflow.parentRunId"] == parents[f"machine-{victim}"].info.run_id]

    study = optuna.load_study(study_name="killed", storage=storage)
    states = [t.state.name for t in study.trials]
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 9, states
    assert states.count("FAIL") == 1 and "RUNNING" not in states and "WAITING" not in states
    lost = next(t for t in study.trials if t.state.name == "FAIL")
    assert lost.number == victim_trial
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == victim_trial)
    assert retry.state.name in ("COMPLETE", "PRUNED")

    assert parents[f"machine-{victim}"].info.status == "FAILED"
    assert "machine lost" in parents[f"machine-{victim}"].data.tags[tag.ERROR]
    assert [p.info.status for k, p in sorted(parents.items()) if k != f"machine-{victim}"] == ["FINISHED"] * 2
    statuses = {int(r.data.tags[tag.TRIAL_NUMBER]): r.info.status for r in trials}
    assert "RUNNING" not in statuses.values(), statuses
    assert statuses[victim_trial] == "FAILED"
    assert len(statuses) == 10 and sorted(statuses) == sorted(t.number for t in study.trials)
    assert study.user_attrs[tag.STUDY_LEASE_PREFIX + parents[f"machine-{victim}"].info.run_id] == -1


def _stopped_mid_trial(procs: list[subprocess.Popen], victim: int, workdir: Path) -> list[int]:
    """Every process of the victim machine once one of them has stopped itself; fails if the machine ends first."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert procs[victim].poll() is None, "the victim ended before its trial stopped:\n" + logs(workdir)
        family = _descendants(procs[victim].pid)
        if any(proc_state(pid) == "T" for pid in family):
            return family
        time.sleep(0.2)
    raise AssertionError("the victim's trial never reached its stop:\n" + logs(workdir))


def _descendants(root: int) -> list[int]:
    parents = {int(p.name): int(fields[1]) for p in Path("/proc").iterdir() if p.name.isdigit()
               if (fields := proc_stat(int(p.name)))}
    family = [root]
    for pid in family:
        family += [child for child, parent in parents.items() if parent == pid]
    return family
