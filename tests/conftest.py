"""Shared fixtures: a real `mlflow server`, embedded sqlite stores, composed configs.

Layered like the configs: the `compose` fixture (or `compose_config`) gives
the real composed config, `TINY` the overrides that make it take CPU-seconds,
and tests add their own on top.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from omegaconf import DictConfig

from servers import MlflowServer, PostgresServer, free_port, wait_http

__all__ = ["MlflowServer", "PostgresServer", "free_port", "wait_http"]  # tests import them from here

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)

# Nothing downloads at test time; MLflow must not print its telemetry banner.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.pop("MLFLOW_RUN_ID", None)
# Two xdist workers share two cores: one torch thread per process, no oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("MLFLOW_EXPERIMENT_ID", None)

# Overrides that make a train step take CPU-seconds; each test adds its own.
TINY = [
    "experiment=example",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
    "trainer.enable_progress_bar=false",
    "extras.print_config=false",
    "registry.log_model=false",
]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL 15 cluster for this test process (Debian's server binaries; see tests/servers.py)."""
    server = PostgresServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_mlflow_server(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """`mlflow server` whose backend store is a database in that PostgreSQL, artifacts served."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-pg-server"), backend_uri=postgres.create_database("mlflow"))
    server.start(timeout_s=180)
    yield server
    server.stop()


_STORE_TEMPLATE: list[Path] = []


def new_sqlite_store(directory: Path) -> str:
    """A ready embedded store in `directory`: a copy of one made once per process.

    MLflow creates its tables on first use without a lock, so a test polling a
    fresh store while a step subprocess opens it races them ("table ...
    already exists"). Copying a made store also spares every step the
    migrations.
    """
    if not _STORE_TEMPLATE:
        from mlflow import MlflowClient

        template = Path(tempfile.mkdtemp(prefix="trainflow-store-")) / "mlflow.db"
        MlflowClient(f"sqlite:///{template}").search_experiments()
        _STORE_TEMPLATE.append(template)
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "mlflow.db"
    shutil.copyfile(_STORE_TEMPLATE[0], db)
    with closing(sqlite3.connect(db)) as con, con:  # `mlflow run`'s Default experiment: artifacts here too
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                    ((directory / "mlruns").as_uri(),))
    return f"sqlite:///{db}"


@pytest.fixture
def sqlite_uri(tmp_path: Path) -> str:
    """An embedded store of the test's own; artifacts go beside it."""
    return new_sqlite_store(tmp_path)


@pytest.fixture
def tracking_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    def use(uri: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        import mlflow

        mlflow.set_tracking_uri(uri)

    return use


@pytest.fixture
def compose() -> Iterator[Callable[..., DictConfig]]:
    """The real configs composed as Hydra would, with HydraConfig set."""
    from hydra.core.global_hydra import GlobalHydra

    yield compose_config
    GlobalHydra.instance().clear()


def compose_config(config_name: str = "train", overrides: list[str] | None = None,
                   output_dir: Path | None = None) -> DictConfig:
    """A step's config as its script gets it; module-scoped fixtures call this directly."""
    from trainflow.config.compose import compose_step_config

    return compose_step_config(config_name, overrides, output_dir, config_dir=ROOT / "configs")


def step_env(tracking_uri: str, **extra: str) -> dict[str, str]:
    """Environment for a step subprocess: the venv first on PATH, our store."""
    env = dict(os.environ)
    env.update(extra)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)
    return env


def run_step(args: list[str], tracking_uri: str, timeout: float = 240, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=step_env(tracking_uri, **extra),
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def mlflow_run(entry: str, params: list[str], tracking_uri: str, timeout: float = 300,
               experiment: str | None = None, **extra: str) -> subprocess.CompletedProcess:
    """`mlflow run` of one entry point; `extra`: environment beside the store (credentials)."""
    cmd = [f"{VENV_BIN}/mlflow", "run", str(ROOT), "-e", entry, "--env-manager", "local"]
    if experiment:
        cmd += ["--experiment-name", experiment]
    for p in params:
        cmd += ["-P", p]
    return subprocess.run(cmd, cwd=ROOT, env=step_env(tracking_uri, **extra), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def all_runs(tracking_uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(ids, max_results=1000)) if ids else []


