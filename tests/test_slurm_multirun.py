"""Hydra multirun on SLURM: `-m hydra/launcher=slurm` submits one job per point, each job one MLflow run.

configs/hydra/launcher/slurm.yaml is the preset (hydra-submitit-launcher);
the jobs run the step's function in a fresh process on the cluster and the
launcher waits for them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, TINY, all_runs, new_sqlite_store, step_env
from servers import SlurmCluster

pytestmark = pytest.mark.slow


def test_a_multirun_on_slurm_makes_one_job_and_one_run_per_point(slurm: SlurmCluster, tmp_path: Path) -> None:
    uri = new_sqlite_store(tmp_path)
    sweep_dir = tmp_path / "multirun"
    done = subprocess.run(
        [sys.executable, "steps/train.py", "-m", "hydra/launcher=slurm", f"hydra.launcher.partition={slurm.PARTITION}",
         "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={sweep_dir}", "model.optimizer.lr=0.01,0.001", *TINY],
        cwd=ROOT, env=slurm.client_env(step_env(uri, OMP_NUM_THREADS="1")), capture_output=True, text=True,
        timeout=500, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    runs = all_runs(uri)
    assert sorted(r.data.params["model.optimizer.lr"] for r in runs) == ["0.001", "0.01"]
    assert all(r.info.status == "FINISHED" and r.data.tags["trainflow.step"] == "train" for r in runs)
    # two SLURM jobs (tasks of one array), each with its own log
    logs = sorted(p.name for p in (sweep_dir / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and logs[0] != logs[1], logs
