"""trainer=ddp_sim: two CPU processes over gloo, one MLflow run, one version, rank-zero logs;
Lightning's own launcher and torchrun alike."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from helpers import ROOT, TINY, all_runs, new_sqlite_store, run_step, step_env
from servers import VENV_BIN
from trainflow.tracking import tags as tag

pytestmark = pytest.mark.slow

MODEL = "ddp-digits"


def test_ddp_sim_makes_one_run_one_version_and_reduced_metrics(tmp_path: Path) -> None:
    uri = new_sqlite_store(tmp_path)
    overrides = [p for p in TINY if not p.startswith(("registry.", "trainer.limit_test"))]
    done = run_step(["steps/train.py", *overrides, "trainer=ddp_sim", f"registry.model_name={MODEL}"], uri,
                    timeout=300, OMP_NUM_THREADS="1")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    runs = all_runs(uri)
    assert len(runs) == 1, [r.data.tags.get("mlflow.runName") for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    client = MlflowClient(uri)
    assert [str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")] == ["1"]
    # rank zero alone writes the step's lines
    assert done.stdout.count("train output:") == 1
    assert done.stdout.count("Instantiating datamodule") == 1

    # test/acc is over the whole test split (both ranks' halves), not rank zero's half
    import mlflow.pyfunc

    mlflow.set_tracking_uri(uri)
    dataset = Path(client.download_artifacts(run.info.run_id, "dataset", str(tmp_path / "ds")))
    test = pq.read_table(dataset / "test.parquet").to_pandas()
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    predicted = model.predict(test.drop(columns=["label"]).astype(np.float32))
    assert isinstance(predicted, pd.DataFrame) and len(predicted) == len(test), type(predicted)
    accuracy = float((predicted.label.astype(int) == test.label).mean())
    assert run.data.metrics["test/acc"] == pytest.approx(accuracy, abs=1e-6)


def test_torchrun_ranks_share_rank_zeros_run(tmp_path: Path) -> None:
    """torchrun starts both ranks at once: rank 1 finds rank 0's run by its job tag instead of opening one."""
    uri = new_sqlite_store(tmp_path)
    overrides = [p for p in TINY if not p.startswith("registry.")]
    done = subprocess.run(
        [f"{VENV_BIN}/torchrun", "--standalone", "--nproc-per-node", "2", "steps/train.py", *overrides,
         "trainer=ddp_sim", "registry.model_name=torchrun-digits"],
        cwd=ROOT, env=step_env(uri, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    runs = all_runs(uri)
    assert len(runs) == 1, [r.data.tags.get("mlflow.runName") for r in runs]
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags[tag.JOB].startswith("torchrun:")
    versions = MlflowClient(uri).search_model_versions("name = 'torchrun-digits'")
    assert [str(v.version) for v in versions] == ["1"]
    assert done.stdout.count("train output:") == 1
