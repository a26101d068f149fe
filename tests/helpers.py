"""What tests share that is not a fixture: the tiny overrides, stores, step runners and serving.

Test modules import these (`from helpers import TINY, run_step`); pytest's
fixtures, which build on them, stay in conftest.py; the servers they start are in servers.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig

from servers import VENV_BIN, free_port, wait_http
from trainflow.tracking import tags as tag

ROOT = Path(__file__).resolve().parents[1]

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


# One made store per process, in a folder removed when the process exits.
_STORE_TEMPLATE: list[tuple[tempfile.TemporaryDirectory, Path]] = []


def new_sqlite_store(directory: Path, busy_timeout_s: float | None = None) -> str:
    """A ready embedded store in `directory`: a copy of one made once per process.

    MLflow creates its tables on first use without a lock, so a test polling a
    fresh store while a step subprocess opens it races them ("table ...
    already exists"). Copying a made store also spares every step the
    migrations. `busy_timeout_s` goes into the URI (sqlite3's `timeout`): how
    long a connection waits for another process's write before "database is
    locked", for tests whose jobs write one store at once (5 s by default,
    which two training jobs and a poller on two busy cores can exceed).
    """
    if not _STORE_TEMPLATE:
        from mlflow import MlflowClient

        folder = tempfile.TemporaryDirectory(prefix="trainflow-store-")
        template = Path(folder.name) / "mlflow.db"
        MlflowClient(f"sqlite:///{template}").search_experiments()
        _STORE_TEMPLATE.append((folder, template))
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "mlflow.db"
    shutil.copyfile(_STORE_TEMPLATE[0][1], db)
    with closing(sqlite3.connect(db)) as con, con:  # `mlflow run`'s Default experiment: artifacts here too
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                    ((directory / "mlruns").as_uri(),))
    return f"sqlite:///{db}" + (f"?timeout={busy_timeout_s:g}" if busy_timeout_s else "")


def drop_store_template() -> None:
    """Remove the made store now: a pytest-xdist worker may end without running exit-time cleanup."""
    while _STORE_TEMPLATE:
        _STORE_TEMPLATE.pop()[0].cleanup()


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


def probed(env: dict[str, str], record: Path) -> dict[str, str]:
    """`env` with tests/probes/sitecustomize.py on PYTHONPATH: every Python process started with it
    (a step, main, the `mlflow` CLI) appends its argv and which of torch and Lightning it imported to `record`."""
    path = os.pathsep.join(p for p in (str(ROOT / "tests" / "probes"), env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONPATH": path, "TRAINFLOW_IMPORT_PROBE": str(record)}


def probe_records(record: Path) -> list[dict]:
    """What the processes `probed` started reported, in the order they exited."""
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def run_step(args: list[str], tracking_uri: str, timeout: float = 240, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=step_env(tracking_uri, **extra),
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def run_step_here(args: list[str], tracking_uri: str, **extra: str) -> subprocess.CompletedProcess:
    """`run_step` inside this process: the step's own Hydra main (pipeline/in_process.py runs it the same
    way inside main), its exit status, stdout and stderr, and the process as it was afterwards.

    For tests about what a step computes (resume, checkpoints, signatures), not about its process: a
    new interpreter's imports are most of a tiny step's CPU time, and the suite is CPU-bound. Every
    entry point still runs as a subprocess in the tests about the CLI and `mlflow run`. What a step
    changes for the whole process comes back: environment, cwd, argv, stop-signal handlers, logging,
    torch's threads and determinism, MLflow's tracking URI and experiment.
    """
    import io
    import logging
    from contextlib import redirect_stderr, redirect_stdout

    import torch
    from hydra.core.hydra_config import HydraConfig
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from trainflow.cli import force_step_overrides
    from trainflow.pipeline.in_process import _hydra_run
    from trainflow.pipeline.main import STEPS

    script, overrides = ROOT / args[0], list(args[1:])
    if script.stem == "main":  # as steps/main.py's accept_mlflow_params: `train.x=1` -> `++train.x=1`
        overrides = force_step_overrides(overrides, STEPS)
    saved_env, saved_argv, saved_cwd, saved_stdin = dict(os.environ), list(sys.argv), os.getcwd(), sys.stdin
    saved_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    root_logger = logging.getLogger()
    saved_logging = (list(root_logger.handlers), root_logger.level)
    saved_torch = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    saved_mlflow = (tracking_utils._tracking_uri, fluent._active_experiment_id)
    saved_hydra = HydraConfig.instance().cfg  # a test's composed config: not a run for the step to come back to
    env, out, err, code = step_env(tracking_uri, **extra), io.StringIO(), io.StringIO(), 0
    try:
        os.environ.clear()
        os.environ.update(env)
        sys.argv = [str(script), *overrides]
        os.chdir(ROOT)
        HydraConfig.instance().cfg = None  # type: ignore[assignment]
        with open(os.devnull) as devnull, redirect_stdout(out), redirect_stderr(err):
            sys.stdin = devnull  # as run_step's stdin: no terminal, whoever runs the suite
            _hydra_run(script, script.stem, overrides)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.stdin = saved_stdin
        HydraConfig.instance().cfg = saved_hydra
        tracking_utils.set_tracking_uri(saved_mlflow[0])
        fluent._active_experiment_id = saved_mlflow[1]
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        for signum, handler in saved_handlers.items():
            signal.signal(signum, handler)
        for handler in root_logger.handlers:
            if handler not in saved_logging[0]:
                handler.close()
        root_logger.handlers[:] = saved_logging[0]
        root_logger.setLevel(saved_logging[1])
        torch.set_num_threads(saved_torch[0])
        torch.use_deterministic_algorithms(saved_torch[1])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def mlflow_run(entry: str, params: list[str], tracking_uri: str, timeout: float = 300,
               experiment: str | None = None, project: Path = ROOT, **extra: str) -> subprocess.CompletedProcess:
    """`mlflow run` of one entry point of `project`; `extra`: environment beside the store (credentials)."""
    cmd = [f"{VENV_BIN}/mlflow", "run", str(project), "-e", entry, "--env-manager", "local"]
    if experiment:
        cmd += ["--experiment-name", experiment]
    for p in params:
        cmd += ["-P", p]
    return subprocess.run(cmd, cwd=project, env=step_env(tracking_uri, **extra), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def all_runs(tracking_uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(ids, max_results=1000)) if ids else []


def steps_of(client: Any, experiment: str) -> dict[str, list]:
    """An experiment's runs (named or by id) grouped by the step that made them."""
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else experiment
    out: dict[str, list] = {}
    for run in client.search_runs([experiment_id], max_results=1000):
        out.setdefault(run.data.tags.get(tag.STEP, "?"), []).append(run)
    return out


def project_copy(dst: Path) -> Path:
    """The files a clone of this working tree has (tracked and new, not ignored): no .venv, stores or logs."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dst / name)
    return dst


@contextmanager
def using_store(directory: Path) -> Iterator[str]:
    """A fresh embedded store in `directory` as this process's tracking URI, for module-scoped set-ups.

    Steps run in-process read `MLFLOW_TRACKING_URI`; MLflow's fluent API keeps
    its own URI, so both are set, and both are put back afterwards.
    """
    import mlflow

    uri = new_sqlite_store(directory)
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(previous)
        patch.undo()


_LOAD_FRESH = """
import json, sys
import mlflow
from mlflow.models import Model
local = mlflow.artifacts.download_artifacts(sys.argv[1], dst_path=sys.argv[2])
model = mlflow.pyfunc.load_model(local)
answer = model.predict(Model.load(local).load_input_example(local))
import importlib
for name in ("trainflow.pipeline.main", "trainflow.sweep.driver"):  # the rest of the package still imports
    importlib.import_module(name)
shipped = sorted(str(p.relative_to(local)) for p in __import__("pathlib").Path(local, "code").rglob("*.py"))
print(json.dumps({"rows": len(answer), "trainflow": sys.modules["trainflow"].__file__, "local": local,
                  "shipped": shipped}))
"""


def load_in_fresh_process(model_uri: str, tracking_uri: str, workdir: Path) -> set[str]:
    """Load a logged model in a new interpreter, answer its own input example, import the rest of trainflow.

    The model's `code/` comes first on sys.path there (and in every process
    this one spawns), so a module the model did not ship fails here although
    this venv has trainflow installed, whether the loader needs it or code
    run after loading does. Asserts that trainflow came from the model's
    `code/` and that the example got an answer; returns the files shipped.
    """
    env = step_env(tracking_uri)
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", _LOAD_FRESH, model_uri, str(workdir)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["trainflow"].startswith(loaded["local"]), loaded["trainflow"]
    assert loaded["rows"] >= 1
    return set(loaded["shipped"])


def serve_and_ask(model_uri: str, columns: list[str], rows: list[list], env: dict[str, str], workdir: Path) -> list:
    """`mlflow models serve` of `model_uri`, as users start it; its answer to one `dataframe_split` request."""
    import json

    port = free_port()
    log = open(workdir / "serve.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [f"{VENV_BIN}/mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 120, proc)
        body = {"dataframe_split": {"columns": columns, "data": rows}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return list(json.loads(response.read())["predictions"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
