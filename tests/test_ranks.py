"""How ranks that torchrun or srun start beside rank zero find its run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import new_sqlite_store
from trainflow.errors import TrackingError
from trainflow.tracking import tags as tag
from trainflow.tracking.ranks import find_leader_run, job_key

KEY = "torchrun:localhost:29500:none"  # a static rendezvous: every job has this key


def test_a_follower_takes_this_jobs_run_never_a_stale_one_with_the_same_key(tmp_path: Path) -> None:
    client = MlflowClient(new_sqlite_store(tmp_path))
    experiment = client.create_experiment("ddp")
    stale = client.create_run(experiment, start_time=int((time.time() - 3600) * 1000), tags={tag.JOB: KEY})
    this_job_started = time.time() - 5
    with pytest.raises(TrackingError, match=r"no run of job torchrun:localhost:29500:none appeared within 0\.5s"):
        find_leader_run(client, KEY, "ddp", this_job_started, timeout_s=0.5, poll_s=0.1)
    current = client.create_run(experiment, tags={tag.JOB: KEY})
    assert find_leader_run(client, KEY, "ddp", this_job_started, timeout_s=5) == current.info.run_id
    assert find_leader_run(client, KEY, experiment, this_job_started, timeout_s=5) == current.info.run_id
    assert stale.info.status == "RUNNING"


@pytest.mark.parametrize(("env", "key"), [
    ({"TORCHELASTIC_RUN_ID": "abc", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "torchrun:h:1:abc"),
    ({"TORCHELASTIC_RUN_ID": "abc", "WORLD_SIZE": "1"}, None),  # one process: nothing to share
    ({"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "3", "SLURM_NTASKS": "4"}, "slurm:77.3"),
    ({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "1"}, None),
    ({}, None),  # Lightning's own launcher: the run id is inherited instead
])
def test_the_job_key_names_one_launch(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], key: str | None) -> None:
    for var in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID", "SLURM_STEP_ID",
                "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert job_key() == key
