"""A URL password in `data.uri` reaches neither the checkpoints nor the logged model.

The dataset is read through an `mlflow-artifacts://user:password@host/...`
URI, so the password really travels the way a user would give it: in the
config, into the data module's saved hyperparameters and the model's tags.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from helpers import TINY, all_runs, run_step_here

pytestmark = pytest.mark.slow

PLANTED = "urlpw-" + secrets.token_hex(8)


def files(folder: Path, prefix: str) -> dict[str, bytes]:
    return {prefix + str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_url_password_in_data_uri_is_in_no_artifact(mlflow_server, tmp_path: Path, tracking_env) -> None:
    tracking_env(mlflow_server.uri)  # the model's source (models:/m-...) resolves through the tracking store
    client = MlflowClient(mlflow_server.uri)
    prepared = run_step_here(["steps/prepare_data.py", "tracking.experiment_name=url-secret-data"], mlflow_server.uri)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    [source] = [r for r in all_runs(mlflow_server.uri) if r.data.tags.get("mlflow.runName", "").startswith(
        "prepare_data") and client.get_experiment(r.info.experiment_id).name == "url-secret-data"]
    where = source.info.artifact_uri.removeprefix("mlflow-artifacts:/")
    host = mlflow_server.uri.removeprefix("http://")
    data_uri = f"mlflow-artifacts://reader:{PLANTED}@{host}/{where.lstrip('/')}/dataset"

    done = run_step_here(["steps/train.py", *TINY, "trainer.max_epochs=2", "registry.log_model=true",
                          "registry.model_name=url-secret-digits", "tracking.experiment_name=url-secret",
                          f"data.uri={data_uri}"], mlflow_server.uri)
    assert done.returncode == 0, done.stderr[-3000:]
    exp = client.get_experiment_by_name("url-secret")
    [run] = client.search_runs([exp.experiment_id])
    assert run.data.params["data.uri"] == data_uri.replace(PLANTED, "***")
    version = client.get_model_version("url-secret-digits", "1")
    logged = {"params": repr(run.data.params).encode(), "tags": repr(run.data.tags).encode(),
              "inputs": repr(run.inputs.dataset_inputs).encode(), "version tags": repr(version.tags).encode(),
              "model tags": repr(client.get_logged_model(version.source.removeprefix("models:/")).tags).encode(),
              **files(Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "run"))), "run/"),
              **files(Path(download_artifacts(artifact_uri=version.source, dst_path=str(tmp_path / "model"))),
                       "model/")}
    assert {"run/checkpoints/best/best.ckpt", "run/checkpoints/last/last.ckpt", "run/config.yaml",
            "model/MLmodel", "model/artifacts/model.yaml", "model/artifacts/weights.pt"} <= set(logged)
    assert [name for name, content in logged.items() if PLANTED.encode() in content] == []
    assert PLANTED not in done.stdout + done.stderr
