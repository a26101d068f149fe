"""A train job preempted and requeued continues the same MLflow run from its last checkpoint.

`mlflow run --backend slurm` submits the job `--requeue`; the test requeues
it (`scontrol requeue`, what preemption does) once an epoch's checkpoint is
logged. SLURM holds a requeued job back (BeginTime) until the cut attempt's
job credential expires; the test cluster sets that to 5 s (`cred_expire`,
tests/servers.py), and the job starts again by SLURM's own rules. (Released
at once with `scontrol update StartTime=now`, the new attempt can be refused,
"Job credential revoked", and the job ends FAILED.)
The job's script sees
`SLURM_RESTART_COUNT` and starts the step again with `resume=<its run>`:
one run, resumed from `checkpoints/last`, every epoch's metrics equal to
those of the same job left alone.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from helpers import ROOT, TINY, all_runs, new_sqlite_store, step_env
from servers import VENV_BIN, SlurmCluster
from trainflow.tracking import tags as tag

pytestmark = pytest.mark.slow

# Enough epochs that the test sees one logged, with `last` uploaded, while many are still to come, however
# fast the machine (with 4 an idle machine finished the job between two polls); min_epochs: all of them run.
EPOCHS = 16
PARAMS = [*[p for p in TINY if not p.startswith(("trainer.max_epochs", "trainer.limit_train"))],
          f"trainer.max_epochs={EPOCHS}", f"trainer.min_epochs={EPOCHS}", "trainer.limit_train_batches=10",
          "trainer.deterministic=true"]


def submit(tmp_path: Path, slurm: SlurmCluster, uri: str, name: str) -> subprocess.Popen:
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({"partition": SlurmCluster.PARTITION, "requeue": True,
                                  "log_dir": str(tmp_path / name), "poll_s": 0.5}))
    cmd = [f"{VENV_BIN}/mlflow", "run", str(ROOT), "-e", "train", "--backend", "slurm", "--backend-config",
           str(config), "--env-manager", "local", "--experiment-name", name]
    for p in PARAMS:
        cmd += ["-P", p]
    return subprocess.Popen(cmd, cwd=tmp_path, env=slurm.client_env(step_env(uri, OMP_NUM_THREADS="1")),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)


def test_a_requeued_job_resumes_its_run_from_the_last_checkpoint(slurm: SlurmCluster, tmp_path: Path) -> None:
    uri = new_sqlite_store(tmp_path, busy_timeout_s=60)  # two jobs and this test write it at once
    client = MlflowClient(uri)
    preempted, alone = submit(tmp_path, slurm, uri, "preempted"), submit(tmp_path, slurm, uri, "alone")
    run = _wait_for_a_logged_epoch(client, "preempted", preempted)
    job = run.data.tags[tag.SLURM_JOB_ID]
    env = slurm.client_env()
    subprocess.run(["scontrol", "requeue", job], env=env, check=True, timeout=30)
    out = preempted.communicate(timeout=500)[0]
    assert preempted.returncode == 0, out[-3000:]
    assert alone.wait(timeout=500) == 0

    runs = {r.info.run_id: r for r in all_runs(uri)}
    assert len(runs) == 2, "the requeued job opened no second run"
    resumed = runs[run.info.run_id]
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["trainflow.resumes"] == "1"
    log = Path(resumed.data.tags[tag.SLURM_LOG]).read_text()
    assert log.count("Running command") == 2, "the job ran twice: before and after its requeue"
    [other] = [r for r in runs.values() if r.info.run_id != run.info.run_id]
    for key in ("val/acc", "val/loss", "train/loss"):
        got = client.get_metric_history(run.info.run_id, key)
        want = {m.step: m.value for m in client.get_metric_history(other.info.run_id, key)}
        assert len(want) == EPOCHS and {m.step for m in got} == want.keys(), key
        # every value equals the uninterrupted run's at its step; the epoch the requeue cut short may have
        # logged its metrics before its checkpoint was uploaded: it is logged again, with the same values
        assert all(abs(m.value - want[m.step]) <= 1e-6 for m in got), (key, got, want)


def _wait_for_a_logged_epoch(client: MlflowClient, experiment: str, submitter: subprocess.Popen,
                             timeout_s: float = 400) -> Any:
    """The run once its first epoch's checkpoint is logged and it is still training."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if submitter.poll() is not None:
            raise AssertionError(f"mlflow run ended first: {submitter.communicate()[0][-3000:]}")
        found = client.get_experiment_by_name(experiment)
        for run in client.search_runs([found.experiment_id]) if found else []:
            epochs = len(client.get_metric_history(run.info.run_id, "val/acc"))
            if run.info.status == "RUNNING" and 1 <= epochs < EPOCHS - 1 and client.list_artifacts(
                    run.info.run_id, "checkpoints/last"):
                return run
        time.sleep(0.3)
    raise AssertionError("no epoch was logged")
