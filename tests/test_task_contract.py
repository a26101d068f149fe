"""The task contract: a task defined entirely in tests/tasks runs the whole pipeline and serves.

`winetask` (data module, network, served model) and its configs live outside
trainflow and reach it only through `trainflow.data.task`: PYTHONPATH makes
the package importable and `hydra.searchpath` adds its config groups, as a
user would add their own task. Nothing in src/trainflow names it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import ROOT, TINY, VENV_BIN, free_port, mlflow_run, run_step, step_env, wait_http
from trainflow.tracking import tags as tag

TASKS = ROOT / "tests" / "tasks"
SEARCHPATH = f"hydra.searchpath=[file://{TASKS / 'configs'}]"
MODEL = "wine-classifier"
EXPERIMENT = "wine"
QUIET = [p for p in TINY if p.startswith(("callbacks.", "trainer.enable_progress_bar", "extras."))]
CULTIVARS = {"class_0", "class_1", "class_2"}


def test_every_task_module_keeps_the_contract() -> None:
    sys.path.insert(0, str(TASKS))
    try:
        from winetask.data import WineDataModule
    finally:
        sys.path.remove(str(TASKS))
    from trainflow.data.digits import DigitsDataModule
    from trainflow.data.image_folder import ImageFolderDataModule
    from trainflow.data.tagging import ConlluDataModule
    from trainflow.data.task import TaskDataModule

    modules = [DigitsDataModule(), ImageFolderDataModule(), ConlluDataModule("a", "b"), WineDataModule()]
    assert all(isinstance(module, TaskDataModule) for module in modules)


def test_a_data_target_that_is_no_task_fails_in_one_line() -> None:
    from trainflow.data.task import task_data_module
    from trainflow.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^data._target_: collections.OrderedDict is not a trainflow task data "
                                          r"module \(lacks build_dataset, model_kwargs, serving_spec"):
        task_data_module({}, "collections.OrderedDict")


@pytest.fixture(scope="module")
def wine(mlflow_server):
    """prepare_data -> train -> evaluate(promote) of the outside task, through `mlflow run`."""
    done = mlflow_run("main", [SEARCHPATH, "experiment=wine_tiny", *QUIET], mlflow_server.uri, timeout=400,
                      experiment=EXPERIMENT, PYTHONPATH=str(TASKS))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = {r.data.tags.get(tag.STEP): r for r in client.search_runs([experiment])}
    return client, runs


@pytest.mark.slow
def test_the_outside_task_runs_the_pipeline_and_is_promoted(wine) -> None:
    client, runs = wine
    assert {step: r.info.status for step, r in runs.items()} == {
        "main": "FINISHED", "prepare_data": "FINISHED", "train": "FINISHED", "evaluate": "FINISHED"}
    assert runs["train"].data.tags[tag.OUTPUT] == f"models:/{MODEL}/1"
    assert runs["evaluate"].data.tags[tag.PROMOTION_DECISION] == "promoted"
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    assert runs["evaluate"].data.metrics["test/acc"] > 0.7  # 3 classes: chance is ~0.4


@pytest.mark.slow
def test_predict_reads_raw_measurements_with_the_task_s_served_model(wine, mlflow_server, tmp_path: Path) -> None:
    from sklearn.datasets import load_wine

    rows = load_wine(as_frame=True).frame.drop(columns="target").head(6)
    source = tmp_path / "recipes.parquet"
    rows.to_parquet(source)
    # no search path, no PYTHONPATH: the model carries its task's code
    done = run_step(["steps/predict.py", f"model_uri=models:/{MODEL}@champion", f"input={source}",
                     "extras.print_config=false", f"hydra.run.dir={tmp_path / 'out'}"], mlflow_server.uri)
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = pd.read_parquet(tmp_path / "out" / "predictions" / "predictions.parquet")
    assert len(predictions) == 6 and set(predictions.label) <= CULTIVARS
    assert ((predictions.probability > 0) & (predictions.probability <= 1)).all()


@pytest.mark.slow
def test_serving_needs_nothing_but_the_model(wine, mlflow_server, tmp_path: Path) -> None:
    """No PYTHONPATH: the task's package travels in the model's code/ and serves from there."""
    env = step_env(mlflow_server.uri)
    env.pop("PYTHONPATH", None)
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [f"{VENV_BIN}/mlflow", "models", "serve", "-m", f"models:/{MODEL}@champion", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 120, proc)
        from sklearn.datasets import load_wine

        frame = load_wine(as_frame=True).frame.drop(columns="target").head(4)
        body = {"dataframe_split": {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    rows = answer["predictions"]
    assert len(rows) == 4 and {row["label"] for row in rows} <= CULTIVARS
    assert all(abs(sum(row[f"prob_{c}"] for c in CULTIVARS) - 1) < 1e-4 for row in rows)
