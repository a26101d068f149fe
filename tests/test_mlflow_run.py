"""Steps run as users run them: `mlflow run` and `python steps/...` subprocesses; the two that check only a
step's refusal run its script in this process (helpers.run_step_here)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from helpers import ROOT, TINY, all_runs, mlflow_run, run_step_here, step_env
from servers import VENV_BIN, free_port
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
    # connect_timeout_s (10 s) and says so. A hang shows as pytest's timeout, not as a timed assert.
    done = run_step_here(["steps/train.py", *TINY], uri)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach tracking server {uri} within 10s"), last


def test_untagged_run_without_a_terminal_fails_clearly(sqlite_uri) -> None:
    done = run_step_here(["steps/train.py", *TINY, "tags=[]", "extras.enforce_tags=true"], sqlite_uri)
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


def _mlflow_run(args: list[str], uri: str) -> subprocess.CompletedProcess:
    """`mlflow run . -e train` with MLflow's own options (`--run-name`, `--run-id`) before the `-P`s."""
    cmd = [f"{VENV_BIN}/mlflow", "run", str(ROOT), "-e", "train", "--env-manager", "local", *args]
    return subprocess.run(cmd, cwd=ROOT, env=step_env(uri), capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def _params(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("-P", override)]


def test_run_name_wins_and_a_finished_run_is_never_trained_again(sqlite_uri, tmp_path) -> None:
    """`--run-name` is kept; `--run-id` of that finished run with another config is refused, the run untouched."""
    first = _mlflow_run(["--experiment-name", "named", "--run-name", "my-name",
                         *_params([*TINY, "extras.ignore_warnings=false", f"hydra.run.dir={tmp_path / 'first'}"])],
                        sqlite_uri)
    assert first.returncode == 0, first.stderr[-3000:]
    [run] = all_runs(sqlite_uri)
    assert run.info.run_name == "my-name"
    assert run.data.tags[tag.RUN_NAME].startswith("train-example-digits max_epochs=1 ")
    client = MlflowClient(sqlite_uri)
    job_log = Path(client.download_artifacts(run.info.run_id, "train.log", str(tmp_path))).read_text()
    assert "Instantiating model" in job_log
    assert "[py.warnings][WARNING]" in job_log and "log_every_n_steps" in job_log, "warnings are in the job log"
    history = client.get_metric_history(run.info.run_id, "val/acc")

    longer = [o for o in TINY if not o.startswith("trainer.max_epochs=")] + ["trainer.max_epochs=2"]
    again = _mlflow_run(["--run-id", run.info.run_id, *_params([*longer, f"hydra.run.dir={tmp_path / 'again'}"])],
                        sqlite_uri)
    assert again.returncode != 0
    assert f"error: run {run.info.run_id} already ran step train (FINISHED): " in again.stderr
    assert "Traceback" not in again.stderr
    after = client.get_run(run.info.run_id)
    # its status is MLflow's to set after a failed `mlflow run` (FAILED even for a run that had ended:
    # mlflow.projects._maybe_set_run_terminated compares the status string with integer codes); the step
    # itself wrote nothing to the run it refused
    assert after.info.run_name == "my-name" and tag.ERROR not in after.data.tags
    assert after.data.params == run.data.params and after.data.params["trainer.max_epochs"] == "1"
    assert client.get_metric_history(run.info.run_id, "val/acc") == history
    assert client.search_model_versions() == []


def test_a_failed_step_keeps_its_job_log_on_the_run(sqlite_uri, tmp_path) -> None:
    done = run_step_here(["steps/train.py", *TINY, "ckpt_path=/nowhere/x.ckpt", f"hydra.run.dir={tmp_path}"],
                         sqlite_uri)
    assert done.returncode == 1
    [run] = all_runs(sqlite_uri)
    assert run.info.status == "FAILED"
    client = MlflowClient(sqlite_uri)
    job_log = Path(client.download_artifacts(run.info.run_id, "train.log", str(tmp_path / "down"))).read_text()
    assert job_log == (tmp_path / "train.log").read_text() and "Instantiating model" in job_log
