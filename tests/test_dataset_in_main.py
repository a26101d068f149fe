"""Inside one `main` run, train reads the dataset prepare_data just wrote: it downloads none of it.

Checked twice over: the train run's own counter (tag `trainflow.data.bytes_downloaded`) and the
tracking server's access log, which shows the dataset's files going up and never coming back down.
Main runs in this process (helpers.run_step_here): what it sends the server is the same however it starts.
"""

from __future__ import annotations

import re

import pytest
from mlflow import MlflowClient

from helpers import TINY, run_step_here
from trainflow.tracking import tags as tag

pytestmark = pytest.mark.slow

EXPERIMENT = "dataset-in-main"


def test_train_inside_main_downloads_nothing_prepare_data_just_uploaded(mlflow_server) -> None:
    params = [p for p in TINY if not p.startswith("registry.")] + ["cache=false", "registry.model_name=in-main"]
    done = run_step_here(["steps/main.py", *params, f"tracking.experiment_name={EXPERIMENT}"], mlflow_server.uri)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = {r.data.tags.get(tag.STEP): r for r in client.search_runs([exp])}
    prepared, trained, evaluated = runs["prepare_data"], runs["train"], runs["evaluate"]
    assert trained.data.tags[tag.DATA_URI] == f"runs:/{prepared.info.run_id}/dataset"
    assert trained.data.tags[tag.DATA_DIGEST] == prepared.data.tags[tag.DATA_DIGEST]
    assert trained.data.tags[tag.DATA_BYTES_DOWNLOADED] == "0"
    assert evaluated.data.tags[tag.DATA_BYTES_DOWNLOADED] == "0"
    dataset_files = re.compile(rf'"(\w+) /api/2\.0/mlflow-artifacts/artifacts/\S*{prepared.info.run_id}'
                               r'/artifacts/dataset/(\S+) HTTP')
    seen = [m.groups() for m in dataset_files.finditer(mlflow_server.log_path.read_text())]
    uploaded = {path for method, path in seen if method == "PUT"}
    assert {"manifest.json", "train.parquet", "val.parquet", "test.parquet"} <= uploaded, seen
    assert [path for method, path in seen if method == "GET"] == [], seen
