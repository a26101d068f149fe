"""Basic-auth tracking servers, credentials, and secrets that never get logged."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from mlflow import MlflowClient

from helpers import TINY, mlflow_run, run_step_here
from servers import MlflowServer
from trainflow.tracking import tags as tag

pytestmark = pytest.mark.slow

ADMIN = "admin"
PLANTED = "planted-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """`mlflow server --app-name basic-auth`, admin password from the environment, 127.0.0.1 only."""
    workdir = tmp_path_factory.mktemp("auth-server")
    password = secrets.token_urlsafe(18)
    ini = workdir / "auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{workdir / 'auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"
    )
    server = MlflowServer(workdir, app_name="basic-auth", env={
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    })
    server.start(timeout_s=120)
    yield server, password
    server.stop()


def logged_bytes(client: MlflowClient, run_id: str, dst: Path) -> tuple[bytes, set[str]]:
    """Every param, tag and artifact byte of a run (and the artifact names), to search for a secret."""
    run = client.get_run(run_id)
    chunks = [repr(run.data.params).encode(), repr(run.data.tags).encode()]
    local = Path(client.download_artifacts(run_id, "", str(dst)))
    names = set()
    for path in local.rglob("*"):
        if path.is_file():
            names.add(str(path.relative_to(local)))
            chunks.append(path.read_bytes())
    return b"\n".join(chunks), names


def logged_bytes_of_model(source: str, uri: str, dst: Path) -> tuple[bytes, set[str]]:
    import mlflow
    from mlflow.artifacts import download_artifacts

    mlflow.set_tracking_uri(uri)
    local = Path(download_artifacts(artifact_uri=source, dst_path=str(dst)))
    files = [p for p in local.rglob("*") if p.is_file()]
    return b"\n".join(p.read_bytes() for p in files), {str(p.relative_to(local)) for p in files}


def test_pipeline_step_with_credentials_logs_no_secret(auth_server, tmp_path) -> None:
    server, password = auth_server
    done = run_step_here(
        ["steps/train.py", *TINY, "registry.log_model=true", "registry.model_name=secure-digits",
         "tracking.experiment_name=secure", f"+database.password={PLANTED}", f"+service.api_key={PLANTED}",
         f"+hub.token={PLANTED}", f"+warehouse.url=postgresql://etl:{PLANTED}@db.internal:5432/features"],
        server.uri, MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=password,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    import os

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = ADMIN, password
    try:
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("secure")
        [run] = client.search_runs([exp.experiment_id])
        assert run.info.status == "FINISHED"
        assert run.data.params["database.password"] == "***"
        assert run.data.params["warehouse.url"] == "postgresql://etl:***@db.internal:5432/features"
        everything, names = logged_bytes(client, run.info.run_id, tmp_path / "artifacts")
        version = client.get_model_version("secure-digits", "1")
        everything += repr(version.tags).encode()
        model_bytes, model_names = logged_bytes_of_model(version.source, server.uri, tmp_path / "model")
        everything += model_bytes
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    assert {"config.yaml", "overrides.yaml", "checkpoints/best/best.ckpt", "dataset/manifest.json"} <= names
    assert {"MLmodel", "artifacts/model.yaml", "artifacts/meta.json"} <= model_names
    assert PLANTED.encode() not in everything
    assert password.encode() not in everything


def test_wrong_credentials_fail_clearly(auth_server) -> None:
    server, _ = auth_server
    done = run_step_here(["steps/train.py", *TINY], server.uri,
                         MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD="wrong-password-123")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: tracking store {server.uri}"), last
    assert "authenticated" in last.lower() or "401" in last
    assert "wrong-password-123" not in done.stderr


def test_the_whole_pipeline_runs_with_credentials_and_logs_none(auth_server, tmp_path, monkeypatch) -> None:
    """`mlflow run .` (prepare_data -> train -> evaluate, promotion) with the credentials in the environment:
    every step authenticates, the alias moves, and the password is in no run or version."""
    server, password = auth_server
    params = [*[o for o in TINY if not o.startswith("registry.")], "registry.model_name=secure-pipeline"]
    credentials = {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": password}
    done = mlflow_run("main", params, server.uri, timeout=400, experiment="secure-pipeline", **credentials)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for key, value in credentials.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name("secure-pipeline")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags[tag.STEP] for r in runs) == ["evaluate", "main", "prepare_data", "train"]
    assert all(r.info.status == "FINISHED" for r in runs)
    champion = client.get_model_version_by_alias("secure-pipeline", "champion")
    everything = repr(champion.tags).encode()
    for run in runs:
        everything += logged_bytes(client, run.info.run_id, tmp_path / run.info.run_id)[0]
    assert password.encode() not in everything
    assert password not in done.stdout + done.stderr
