"""Resume: an interrupted deterministic run, continued in place, ends like an uninterrupted one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from conftest import ROOT, all_runs, mlflow_run, new_sqlite_store, run_step, step_env
from trainflow.tracking import tags as tag

pytestmark = pytest.mark.slow

ARGS = ["steps/train.py", "experiment=example", "trainer.max_epochs=8", "trainer.min_epochs=8",
        "trainer.deterministic=true", "extras.print_config=false", "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null", "trainer.enable_progress_bar=false", "registry.log_model=false",
        "tracking.flush_every_s=0", "callbacks.early_stopping=null", "tags=[resume]"]
FINAL = ("test/acc", "test/loss", "val/acc", "val/loss", "val/acc_best", "train/loss", "train/acc")


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_interrupted_then_resumed_matches_uninterrupted(tmp_path) -> None:
    uri = new_sqlite_store(tmp_path)
    client = MlflowClient(uri)

    straight = run_step([*ARGS, "tracking.experiment_name=straight"], uri)
    assert straight.returncode == 0, straight.stderr[-2000:]

    proc = subprocess.Popen([sys.executable, *ARGS, "tracking.experiment_name=interrupted"], cwd=ROOT,
                            env=step_env(uri), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            runs = [r for r in all_runs(uri) if r.data.tags.get("mlflow.runName") and
                    client.get_experiment(r.info.experiment_id).name == "interrupted"]
            if runs and len(history(client, runs[0].info.run_id, "val/acc")) >= 3:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    interrupted = runs[0].info.run_id
    killed = client.get_run(interrupted)
    assert killed.info.status == "KILLED" and "SIGTERM" in killed.data.tags[tag.ERROR]
    assert "interrupted by SIGTERM" in err
    epochs_done = len(history(client, interrupted, "val/acc"))
    assert epochs_done < 8, "the interruption came too late to test anything"
    assert {a.path for a in client.list_artifacts(interrupted, "checkpoints/last")} >= {"checkpoints/last/last.ckpt"}

    # through `mlflow run -P resume=...`: the run MLflow made is closed, pointing at the one resumed
    resumed = mlflow_run("train", [*ARGS[1:], f"resume={interrupted}"], uri, experiment="relaunch")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    [launched] = [r for r in all_runs(uri) if client.get_experiment(r.info.experiment_id).name == "relaunch"]
    assert launched.info.status == "FINISHED" and launched.data.tags[tag.RESUMED_INTO] == interrupted
    run = client.get_run(interrupted)
    assert run.info.status == "FINISHED" and run.data.tags[tag.RESUMES] == "1"
    [reference] = [r for r in all_runs(uri) if client.get_experiment(r.info.experiment_id).name == "straight"]
    for key in FINAL:
        assert run.data.metrics[key] == pytest.approx(reference.data.metrics[key], abs=1e-6), key
    # the whole history lives in the one run: every epoch's validation, once per step
    steps = [s for s, _ in history(client, interrupted, "val/acc")]
    assert sorted(set(steps)) == sorted({s for s, _ in history(client, reference.info.run_id, "val/acc")})
