"""A sweep as a SLURM job array: every array task is one machine of one Optuna study in PostgreSQL.

`sbatch --array=0-2` of the sweep command, as docs/scaling.md gives it, on
the PostgreSQL-backed `mlflow server`; the study's URL reaches the tasks
through the environment (`${oc.env:OPTUNA_URL}`), never the job's command
line. One task's processes are SIGKILLed while its trial trains (what a
node failure does): a lost machine, so the others run its trial again and
nothing stays RUNNING.

`scancel` is not that: it always sends SIGTERM first (even
`--signal=KILL`), the sweep takes SIGTERM as an interruption, fails its
trial and ends, and the study finishes one trial short
(trainflow/sweep/worker.py `run_and_tell` does not queue an interrupted
trial again).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from helpers import ROOT, TINY, step_env
from servers import PostgresServer, SlurmCluster
from trainflow.tracking import tags as tag

pytestmark = pytest.mark.slow

N_TRIALS = 6
# trials long enough to be caught training; machines beat every second and are lost after 4 s of silence
SWEEP = [*TINY, "hparams_search=digits_optuna", "sweep.n_workers=1", "sweep.pruner=null",
         "sweep.sampler.n_startup_trials=3", "trainer.max_epochs=3", "trainer.limit_train_batches=30",
         "sweep.heartbeat_s=1", "sweep.grace_s=4"]


def test_an_array_of_three_runs_exactly_n_trials_and_recovers_a_killed_task(
        slurm: SlurmCluster, postgres: PostgresServer, pg_mlflow_server, tmp_path: Path) -> None:
    storage = postgres.create_database("study_array")
    study = "array"
    command = " ".join([sys.executable, "steps/sweep.py", *SWEEP, "'sweep.storage=${oc.env:OPTUNA_URL}'",
                        f"sweep.study_name={study}", f"sweep.n_trials={N_TRIALS}", "seed=$SLURM_ARRAY_TASK_ID",
                        "'tags=[task-'$SLURM_ARRAY_TASK_ID']'",
                        f"hydra.run.dir={tmp_path}/task-$SLURM_ARRAY_TASK_ID"])
    env = slurm.client_env(step_env(pg_mlflow_server.uri, OPTUNA_URL=storage, OMP_NUM_THREADS="1"))
    submitted = subprocess.run(["sbatch", "--parsable", "--array=0-2", f"--output={tmp_path}/slurm-%A_%a.out",
                                f"--chdir={ROOT}", "--wrap", command], env=env, capture_output=True, text=True,
                               timeout=60, check=True)
    job = submitted.stdout.strip()
    client = MlflowClient(pg_mlflow_server.uri)
    victim = _kill_a_task_mid_trial(client, storage, study, job, env)
    _wait_for_array(job, env)

    # what the tasks said about the study (claims, lost machines, interruptions), for a failure's message
    log = "\n".join(f"{p.name}: {line[:200]}" for p in sorted(tmp_path.glob("slurm-*.out"))
                    for line in p.read_text().splitlines() if line.startswith(("sweep:", "trial ", "error:", "slurm")))
    trials = optuna.load_study(study_name=study, storage=storage).trials
    states = [t.state.name for t in trials]
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == N_TRIALS, f"{states}\n{log}"
    assert "RUNNING" not in states and "WAITING" not in states
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`{tag.SWEEP_STUDY}` = '{study}'", max_results=1000)
    assert runs and all(r.info.status != "RUNNING" for r in runs), [(r.data.tags.get(tag.STEP), r.info.status)
                                                                     for r in runs]
    parents = {next(k.removeprefix("tag.") for k in r.data.tags if k.startswith("tag.task-")): r
               for r in runs if r.data.tags.get(tag.STEP) == "sweep"}
    assert sorted(parents) == ["task-0", "task-1", "task-2"]
    assert parents[f"task-{victim}"].info.status == "FAILED"
    assert "machine lost" in parents[f"task-{victim}"].data.tags[tag.ERROR]
    assert [p.info.status for k, p in sorted(parents.items()) if k != f"task-{victim}"] == ["FINISHED"] * 2, f"{log}"
    for run in runs:
        assert PostgresServer.PASSWORD not in str(run.data.params) + str(run.data.tags)


def _kill_a_task_mid_trial(client: MlflowClient, storage: str, study: str, job: str, env: dict[str, str]) -> int:
    """SIGKILL the array task of a trial still in its first epoch (no val/acc yet); its index."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            running = optuna.load_study(study_name=study, storage=storage).get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:  # not created yet
            time.sleep(0.5)
            continue
        for trial in running:
            run_id = trial.user_attrs.get("mlflow_run_id")
            run = client.get_run(run_id) if run_id else None
            if run and run.info.status == "RUNNING" and "val/acc" not in run.data.metrics:
                parent = client.get_run(run.data.tags["mlflow.parentRunId"])
                task = int(next(k for k in parent.data.tags if k.startswith("tag.task-")).removeprefix("tag.task-"))
                _kill_task(job, task, env)
                return task
        time.sleep(0.2)
    raise AssertionError("no trial was seen training")


def _kill_task(job: str, task: int, env: dict[str, str]) -> None:
    """Every process of one array task, SIGKILLed at once as a dying node would (SLURM's own pids)."""
    listed = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%A %K"], env=env, capture_output=True,
                            text=True, timeout=30, check=True).stdout.split("\n")
    job_id = next(line.split()[0] for line in listed if line.split()[1:] == [str(task)])
    pids = subprocess.run(["scontrol", "listpids", job_id], env=env, capture_output=True, text=True, timeout=30,
                          check=True).stdout.splitlines()[1:]
    for pid in (int(line.split()[0]) for line in pids if line.split()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _wait_for_array(job: str, env: dict[str, str], timeout_s: float = 500) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True, timeout=30)
        if queued.returncode == 0 and not queued.stdout.strip():
            return
        time.sleep(1)
    raise AssertionError(f"array job {job} still queued after {timeout_s}s")
