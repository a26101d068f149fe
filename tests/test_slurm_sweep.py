"""A sweep as a SLURM job array: every array task is one machine of one Optuna study in PostgreSQL.

`sbatch --array=0-2` of the sweep command, as docs/scaling.md gives it, on
the PostgreSQL-backed `mlflow server`; the study's URL reaches the tasks
through the environment (`${oc.env:OPTUNA_URL}`), never the job's command
line. One task is `scancel`ed while its trial trains: SLURM sends SIGTERM,
then SIGKILL KillWait (5 s) later. Within that, the task puts its trial back
in the study's queue, fails it and ends its runs KILLED; another task runs
the trial again, and the study still ends with exactly `n_trials` finished.

A machine killed outright (SIGKILL, no SIGTERM first: a dead node) is
tests/test_multimachine_sweep.py's lost machine.
"""

from __future__ import annotations

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


def test_an_array_of_three_runs_exactly_n_trials_and_retries_a_scancelled_tasks_trial(
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
    victim, stopped = _scancel_a_task_mid_trial(client, storage, study, job, env)
    _wait_for_array(job, env)

    # what the tasks said about the study (claims, interruptions, lost machines), for a failure's message
    log = "\n".join(f"{p.name}: {line[:200]}" for p in sorted(tmp_path.glob("slurm-*.out"))
                    for line in p.read_text().splitlines()
                    if line.startswith(("sweep:", "trial ", "error:", "slurm")))
    trials = optuna.load_study(study_name=study, storage=storage).trials
    states = [t.state.name for t in trials]
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == N_TRIALS, f"{states}\n{log}"
    assert "RUNNING" not in states and "WAITING" not in states, f"{states}\n{log}"
    # the stopped trial failed and ran again, elsewhere, with the same params
    assert trials[stopped].state.name == "FAIL", f"{states}\n{log}"
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == stopped)
    assert retry.state.name in ("COMPLETE", "PRUNED") and retry.params == trials[stopped].params
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`{tag.SWEEP_STUDY}` = '{study}'", max_results=1000)
    assert runs and all(r.info.status != "RUNNING" for r in runs), [(r.data.tags.get(tag.STEP), r.info.status)
                                                                     for r in runs]
    parents = {next(k.removeprefix("tag.") for k in r.data.tags if k.startswith("tag.task-")): r
               for r in runs if r.data.tags.get(tag.STEP) == "sweep"}
    assert sorted(parents) == ["task-0", "task-1", "task-2"]
    # KILLED, not FAILED as a lost machine's: the task ended its runs itself before SLURM's SIGKILL
    stopped_parent = parents.pop(f"task-{victim}")
    assert stopped_parent.info.status == "KILLED", f"{stopped_parent.data.tags.get(tag.ERROR)}\n{log}"
    assert stopped_parent.data.tags[tag.ERROR] == "interrupted by SIGTERM"
    assert client.get_run(trials[stopped].user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert retry.user_attrs["mlflow_sweep_run_id"] != stopped_parent.info.run_id
    assert [p.info.status for _, p in sorted(parents.items())] == ["FINISHED"] * 2, f"{log}"
    for run in runs:
        assert PostgresServer.PASSWORD not in str(run.data.params) + str(run.data.tags)


def _scancel_a_task_mid_trial(client: MlflowClient, storage: str, study: str, job: str,
                              env: dict[str, str]) -> tuple[int, int]:
    """`scancel` the array task of a trial still in its first epoch (no val/acc yet): (task index, trial number)."""
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
                subprocess.run(["scancel", f"{job}_{task}"], env=env, timeout=30, check=True)
                return task, trial.number
        time.sleep(0.2)
    raise AssertionError("no trial was seen training")


def _wait_for_array(job: str, env: dict[str, str], timeout_s: float = 500) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True, timeout=30)
        if queued.returncode == 0 and not queued.stdout.strip():
            return
        time.sleep(1)
    raise AssertionError(f"array job {job} still queued after {timeout_s}s")
