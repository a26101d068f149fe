"""Steps run as users run them: `mlflow run` and `python steps/...` subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from conftest import ROOT, TINY, all_runs, free_port, mlflow_run, run_step, step_env
from trainflow.tracking import tags as tag

pytestmark = pytest.mark.slow


def test_mlflow_run_train_makes_exactly_one_tracked_run(mlflow_server) -> None:
    experiment = "mlflow-run-train"
    params = [*TINY,
        "tags=[smoke,'with space']",
        "tracking.run_name=my run: a/b@c",
        "extras.enforce_tags=true",
    ]
    done = mlflow_run("train", params, mlflow_server.uri, experiment=experiment)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, "Lightning must log into the run `mlflow run` made, not a second one"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "my run: a/b@c"
    assert run.data.tags[tag.STEP] == "train"
    assert run.data.tags["mlflow.project.entryPoint"] == "train"
    assert json.loads(run.data.tags[tag.OVERRIDES])[:2] == ["experiment=example", "trainer.max_epochs=1"]
    assert run.data.tags["tag.with space"] == "true"
    assert run.data.params["trainer.max_epochs"] == "1"
    assert "test/acc" in run.data.metrics
    paths = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "overrides.yaml", "checkpoints"} <= paths


def test_bad_override_fails_the_run_with_hydras_message(mlflow_server) -> None:
    experiment = "mlflow-run-bad-override"
    done = mlflow_run("train", ["trainer.max_epoch=3"], mlflow_server.uri, experiment=experiment)
    assert done.returncode != 0
    assert "max_epoch" in done.stderr
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_unreachable_tracking_server_fails_fast_naming_the_uri(tmp_path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    # The default config. MLflow's own retries would take minutes; the step gives up after one
    # connect_timeout_s (10 s) and says so. A hang shows as TimeoutExpired, not as a timed assert.
    done = run_step(["steps/train.py", *TINY], uri, timeout=75)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach tracking server {uri} within 10s"), last


def test_untagged_run_without_a_terminal_fails_clearly(sqlite_uri) -> None:
    done = run_step(["steps/train.py", *TINY, "tags=[]", "extras.enforce_tags=true"], sqlite_uri)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: tags: empty and no terminal")
    assert all_runs(sqlite_uri) == [], "nothing is tracked for a step that never started"


@pytest.mark.parametrize("sig", [signal.SIGINT])  # SIGTERM: tests/test_resume.py
def test_signal_ends_the_run_killed_with_a_nonzero_exit(sqlite_uri, sig) -> None:
    args = ["steps/train.py", "experiment=example", "trainer.max_epochs=1000", "trainer.min_epochs=1000",
            "extras.print_config=false", "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false",
            "registry.log_model=false", "tracking.flush_every_s=0"]
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=step_env(sqlite_uri),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            runs = all_runs(sqlite_uri)
            if runs and "val/acc" in runs[0].data.metrics:
                break
            time.sleep(0.5)
        else:
            pytest.fail("training never logged a metric")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig
    run = all_runs(sqlite_uri)[0]
    assert run.info.status == "KILLED"
    assert sig.name in run.data.tags[tag.ERROR]
    assert f"interrupted by {sig.name}" in err
