"""`mlflow run` builds the project's environment itself, as on a machine without our venv."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from helpers import ROOT, TINY, VENV_BIN, new_sqlite_store, step_env

pytestmark = pytest.mark.slow


def fresh_clone(dst: Path) -> Path:
    """The files a clone of this working tree has (tracked and new, not ignored): no .venv, no stores."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dst / name)
    return dst


def test_train_runs_in_the_env_uv_builds_from_the_lock(tmp_path: Path) -> None:
    """MLflow names the env after conda.yaml and keeps it in ~/.mlflow/envs: only the first run pays for it."""
    project = fresh_clone(tmp_path / "clone")
    store = new_sqlite_store(tmp_path / "store")
    cmd = [f"{VENV_BIN}/mlflow", "run", str(project), "-e", "train", "--env-manager", "uv",
           "--experiment-name", "uv-env"]
    for param in TINY:
        cmd += ["-P", param]
    done = subprocess.run(cmd, cwd=tmp_path, env=step_env(store), capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
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
    env_dir = re.search(r"(?:Creating a new environment in|Environment) (\S+)", done.stderr)
    assert env_dir, done.stderr[-3000:]
    bare = subprocess.run([f"{env_dir.group(1)}/bin/python", "-c", "import trainflow"], cwd=tmp_path,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert "No module named 'trainflow'" in bare.stderr
