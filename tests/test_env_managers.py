"""`mlflow run` builds the project's environment itself, as on a machine without our venv."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from helpers import TINY, VENV_BIN, new_sqlite_store, project_copy, step_env

pytestmark = pytest.mark.slow


def test_train_runs_in_the_env_uv_builds_from_the_lock(tmp_path: Path) -> None:
    """MLflow names the env after conda.yaml and keeps it under MLFLOW_ENV_ROOT (~/.mlflow/envs), reusing one
    made before: an env root of the test's own makes it build from the lock every time, on any machine."""
    project = project_copy(tmp_path / "clone")
    store = new_sqlite_store(tmp_path / "store")
    env_root = tmp_path / "envs"
    cmd = [f"{VENV_BIN}/mlflow", "run", str(project), "-e", "train", "--env-manager", "uv",
           "--experiment-name", "uv-env"]
    for param in TINY:
        cmd += ["-P", param]
    # under pytest's own 600 s limit, so a slow build fails here with MLflow's output, not as a pytest timeout
    done = subprocess.run(cmd, cwd=tmp_path, env=step_env(store, MLFLOW_ENV_ROOT=str(env_root)), capture_output=True,
                          text=True, timeout=540, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("uv-env").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.env"] == "uv"
    assert run.data.tags["trainflow.step"] == "train"
    assert "test/acc" in run.data.metrics
    # the env holds the dependencies only: the code that ran came from the clone's src/
    env_dir = re.search(r"Creating a new environment in (\S+)", done.stderr)
    assert env_dir, done.stderr[-3000:]
    assert Path(env_dir.group(1)).is_relative_to(env_root), env_dir.group(1)
    bare = subprocess.run([f"{env_dir.group(1)}/bin/python", "-c", "import trainflow"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert "No module named 'trainflow'" in bare.stderr
