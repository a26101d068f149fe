"""`mlflow run . -e train --backend slurm --backend-config slurm.json` on a real one-node cluster.

`mlflow run` creates the run, the batch job runs the entry point through
MLflow's local backend and the step attaches to that run; the run carries
the job id; the CLI waits and exits with the job's status. Bad input (no
cluster, a partition that does not exist, a job that fails at start) ends in
one line, a non-zero exit and no run left RUNNING.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from helpers import ROOT, TINY, all_runs, new_sqlite_store, step_env
from servers import VENV_BIN, SlurmCluster
from trainflow.slurm import jobs
from trainflow.tracking import tags as tag

pytestmark = pytest.mark.slow

PARAMS = [p for p in TINY if not p.startswith(("callbacks.", "trainer.enable_progress_bar"))]


def backend_config(tmp_path: Path, **options: object) -> Path:
    config = tmp_path / "slurm.json"
    config.write_text(json.dumps({"partition": SlurmCluster.PARTITION, "time": "10", "log_dir": str(tmp_path / "logs"),
                                  "poll_s": 0.5, **options}))
    return config


def mlflow_run_slurm(tmp_path: Path, slurm: SlurmCluster, params: list[str], env_manager: str | None = "local",
                     slurm_conf: Path | None = None, **options: object) -> tuple[subprocess.CompletedProcess, str]:
    """`mlflow run -e train --backend slurm`; `slurm_conf` points the clients at another cluster config."""
    uri = new_sqlite_store(tmp_path)
    env = slurm.client_env(step_env(uri))
    if slurm_conf is not None:
        env["SLURM_CONF"] = str(slurm_conf)
    cmd = [f"{VENV_BIN}/mlflow", "run", str(ROOT), "-e", "train", "--backend", "slurm",
           "--backend-config", str(backend_config(tmp_path, **options))]
    cmd += ["--env-manager", env_manager] if env_manager else []
    for p in params:
        cmd += ["-P", p]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
                          stdin=subprocess.DEVNULL)
    return done, uri


def errors(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if "error:" in line]


def test_mlflow_run_waits_for_the_job_and_the_step_attaches_to_its_run(slurm: SlurmCluster, tmp_path: Path) -> None:
    done, uri = mlflow_run_slurm(tmp_path, slurm, PARAMS)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = all_runs(uri)
    assert len(runs) == 1, [r.data.tags for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["trainflow.step"] == "train" and tags["mlflow.project.backend"] == "slurm"
    job_id = tags[tag.SLURM_JOB_ID]
    assert f"submitted SLURM job {job_id} for MLflow run {run.info.run_id}" in done.stderr
    assert "val/acc" in run.data.metrics
    assert "train output:" in Path(tags[tag.SLURM_LOG]).read_text()


def test_a_failing_job_gives_a_failed_run_and_a_nonzero_exit(slurm: SlurmCluster, tmp_path: Path) -> None:
    done, uri = mlflow_run_slurm(tmp_path, slurm, [*PARAMS, "model.optimizer.lr=fast"])
    assert done.returncode != 0
    [line] = errors(done) or [done.stderr[-3000:]]
    assert "ended FAILED" in line and "model.optimizer.lr" in line, line
    assert [r.info.status for r in all_runs(uri)] == ["FAILED"]


def test_a_job_that_fails_at_start_leaves_no_run_running(slurm: SlurmCluster, tmp_path: Path) -> None:
    """No --env-manager: MLflow's default for a conda_env project is conda, which this machine lacks."""
    done, uri = mlflow_run_slurm(tmp_path, slurm, PARAMS, env_manager=None)
    assert done.returncode != 0
    [line] = errors(done) or [done.stderr[-3000:]]
    assert "ended FAILED" in line and "onda" in line, line
    assert [r.info.status for r in all_runs(uri)] == ["FAILED"]


def test_a_partition_that_does_not_exist_is_refused_before_any_run(slurm: SlurmCluster, tmp_path: Path) -> None:
    done, uri = mlflow_run_slurm(tmp_path, slurm, PARAMS, partition="nope")
    assert done.returncode != 0
    [line] = errors(done) or [done.stderr[-3000:]]
    assert "invalid partition specified: nope" in line, line
    assert all_runs(uri) == []


@pytest.mark.parametrize("cluster", ["not configured", "controller down"])
def test_a_cluster_that_cannot_be_reached_is_refused_in_one_line(slurm: SlurmCluster, tmp_path: Path,
                                                                 cluster: str) -> None:
    """No slurm.conf where SLURM_CONF points, or a controller that does not answer: one line, no run."""
    conf = tmp_path / "absent" / "slurm.conf"
    expected = f"SLURM_CONF={conf} does not exist"
    if cluster == "controller down":
        conf = tmp_path / "down.conf"
        # MessageTimeout: a client gives up on the controller after 2 s, not SLURM's default 10
        conf.write_text(slurm.conf.read_text().replace(f"SlurmctldPort={slurm.ctld_port}", "SlurmctldPort=1")
                        + "MessageTimeout=2\n")
        expected = "Unable to contact slurm controller"
    done, uri = mlflow_run_slurm(tmp_path, slurm, [], slurm_conf=conf)
    assert done.returncode != 0
    [line] = errors(done) or [done.stderr[-3000:]]
    assert expected in line, line
    assert all_runs(uri) == []


def test_the_python_api_submits_without_waiting_and_wait_status_and_cancel_work(
        slurm: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow import MlflowClient

    uri = new_sqlite_store(tmp_path, busy_timeout_s=60)  # two jobs and this test write it at once
    for key, value in slurm.client_env(step_env(uri)).items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(uri)
    config = json.loads(backend_config(tmp_path).read_text())
    params = dict(p.split("=", 1) for p in PARAMS)

    short = mlflow.projects.run(str(ROOT), "train", backend="slurm", backend_config=config, env_manager="local",
                                parameters=params, synchronous=False)
    long = mlflow.projects.run(str(ROOT), "train", backend="slurm", backend_config=config, env_manager="local",
                               parameters={**params, "trainer.max_epochs": "500", "trainer.limit_train_batches": "1.0"},
                               synchronous=False)
    assert short.get_status() in ("SCHEDULED", "RUNNING")
    client = MlflowClient(uri)
    while client.get_run(long.run_id).data.tags.get("trainflow.step") != "train":  # the step has attached
        time.sleep(0.5)
    long.cancel()
    assert long.get_status() == "KILLED"
    assert client.get_run(long.run_id).info.status == "KILLED"
    job = client.get_run(long.run_id).data.tags[tag.SLURM_JOB_ID]
    state = subprocess.run(["scontrol", "show", "job", job], env=slurm.client_env(), capture_output=True, text=True)
    assert "JobState=CANCELLED" in state.stdout

    assert short.wait() is True
    assert short.get_status() == "FINISHED"
    assert client.get_run(short.run_id).info.status == "FINISHED"


def test_backend_config_keys_become_sbatch_flags_and_a_typo_is_named() -> None:
    assert jobs.sbatch_flags({"partition": "gpu", "time": "01:00:00", "requeue": True, "gres": None}) == [
        "--partition=gpu", "--time=01:00:00", "--requeue"]
    with pytest.raises(jobs.SlurmError, match=r"unknown SLURM option.* partiton"):
        jobs.sbatch_flags({"partiton": "gpu"})
