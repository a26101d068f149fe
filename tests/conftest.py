"""Shared fixtures: a real `mlflow server`, embedded sqlite stores, composed configs.

Layered like the configs: the `compose` fixture gives the real composed
config, `helpers.TINY` the overrides that make it take CPU-seconds, and tests
add their own on top. Plain helpers (runners, stores, TINY) live in helpers.py,
the servers the fixtures start in servers.py.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from omegaconf import DictConfig

from helpers import compose_config, drop_store_template, new_sqlite_store
from servers import MlflowServer, PostgresServer, SessionServers, SlurmCluster
from system_packages import InstallError, ensure_installed

# Nothing downloads at test time; MLflow must not print its telemetry banner.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.pop("MLFLOW_RUN_ID", None)
# Two xdist workers share two cores: one torch thread per process, no oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


@pytest.fixture(scope="session", autouse=True)
def outputs_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Hydra's run folders and the download cache of every step (in-process or a subprocess) go under
    pytest's temporary folder: none fills the checkout's logs/, none reuses its .cache/ from an earlier run;
    the store template goes with the session."""
    patch = pytest.MonkeyPatch()
    patch.setenv("TRAINFLOW_LOG_DIR", str(tmp_path_factory.mktemp("logs")))
    patch.setenv("TRAINFLOW_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    patch.undo()
    drop_store_template()


# The stop signals' handlers of a Python process started from a terminal. Not the ones this process found:
# a suite started in the background by a script (`cmd &`) inherits SIGINT ignored, and so would every step
# and sweep the tests start, which then cannot be interrupted as the tests interrupt them.
_STOP_HANDLERS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


@pytest.fixture(autouse=True)
def process_state_of_its_own() -> Iterator[None]:
    """Each test starts with the process's own stop-signal handlers and leaves Hydra's run config as it found it.

    Tests share their xdist worker's process, in an order that changes, and a child process inherits an
    ignored signal: with SIGINT ignored (a suite started by `cmd &`, or code that ran in process and left it
    so; Lightning ignores it for good after a KeyboardInterrupt in a fit) a test's Ctrl-C reaches a sweep
    that cannot hear it.
    `find_drift` composes a project copy's configs, and HydraConfig, left set, makes project_root() name
    that copy in every later test of the worker.
    """
    from hydra.core.hydra_config import HydraConfig

    for signum, handler in _STOP_HANDLERS.items():
        signal.signal(signum, handler)
    hydra_config = HydraConfig.instance().cfg
    yield
    HydraConfig.instance().cfg = hydra_config
    for signum, handler in _STOP_HANDLERS.items():
        signal.signal(signum, handler)


@pytest.fixture(scope="session")
def mlflow_server() -> MlflowServer:
    """The session's `mlflow server` (sqlite, artifacts served), shared by xdist workers (servers.SessionServers)."""
    return SessionServers.of_session().mlflow("mlflow-server")


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    """The session's PostgreSQL 15 cluster (Debian's server binaries; see tests/servers.py)."""
    return SessionServers.of_session().postgres()


@pytest.fixture(scope="session")
def pg_mlflow_server(postgres: PostgresServer) -> MlflowServer:
    """The session's `mlflow server` whose backend store is a database in that PostgreSQL, artifacts served."""
    return SessionServers.of_session().mlflow("mlflow-pg-server",
                                              backend_uri=lambda: postgres.create_database("mlflow"))


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with a test marked slow (it starts real processes) first, the many unit tests after them.

    xdist hands each worker one file at a time (`--dist loadfile`, queued in
    collection order with `--no-loadscope-reorder`). Collected alphabetically,
    the longest files (SLURM, UI) came last, and one worker ran them alone
    while the other had finished; started first, they overlap, and the short
    files fill whichever worker is free. A file that starts a server or a
    fresh interpreter belongs with the slow ones even if most of its tests
    are quick: left among the unit tests, it ends one worker's queue long
    after the other's. The sort is stable, so each file keeps its tests' order.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """An xdist worker leaves without finalising torch, Lightning and MLflow, as steps do (trainflow.fast_exit).

    Its results reached the controller in pytest_sessionfinish, and the
    controller waits for the process to end: the interpreter's teardown of
    everything the tests imported was the last seconds of every run
    (figures: README, Development). The controlling process, last to end,
    stops the servers the session shared (servers.SessionServers).
    """
    if hasattr(config, "workerinput"):
        from trainflow.fast_exit import exit_now

        exit_now(0)
    while _SESSION_SERVERS:  # the controlling process (or the only one): every worker is done with them
        _SESSION_SERVERS.pop().stop_all()


# --- System packages and the SLURM cluster (issue 23; owned by the SLURM work) ---------------------------


def pytest_configure(config: pytest.Config) -> None:
    """Install chromium, PostgreSQL's server and SLURM where missing, once per session (tests/system_packages.py).

    Only the controlling process does it: xdist workers start after this
    returns, and two apt-gets at once would fight over dpkg's lock. It also
    makes the folder through which the workers share servers (servers.SessionServers).
    """
    if hasattr(config, "workerinput"):
        return
    try:
        ensure_installed(say=lambda line: print(line, file=sys.stderr, flush=True))
    except InstallError as e:
        raise pytest.UsageError(str(e)) from None
    _SESSION_SERVERS.append(SessionServers.create())


# Made by the controlling process in pytest_configure, stopped in its pytest_unconfigure.
_SESSION_SERVERS: list[SessionServers] = []


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """A one-node SLURM cluster (munged, slurmctld, slurmd) for this test process; clients use `slurm.client_env()`."""
    cluster = SlurmCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
