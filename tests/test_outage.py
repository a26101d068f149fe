"""Tracking server outages: training goes on, nothing is lost."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from helpers import ROOT, step_env
from servers import MlflowServer, free_port
from trainflow.errors import TrackingError
from trainflow.tracking.lightning import RunLogger
from trainflow.tracking.sync import sync

# Long enough to outlive the kill; it may end while the server is still away,
# and then the step waits (tracking.outage_grace_s) to send what it buffered.
# Short epochs: the test needs many logged epochs and checkpoints, not many batches.
EPOCHS = 60


@pytest.mark.slow
def test_server_killed_mid_training_and_restarted(tmp_path: Path) -> None:
    server = MlflowServer(tmp_path / "server")
    server.workdir.mkdir()
    server.start()
    args = ["steps/train.py", "experiment=example", f"trainer.max_epochs={EPOCHS}", f"trainer.min_epochs={EPOCHS}",
            "callbacks.early_stopping=null", "callbacks.rich_progress_bar=null", "callbacks.model_summary=null",
            "trainer.enable_progress_bar=false", "extras.print_config=false", "registry.log_model=false",
            "tracking.flush_every_s=0.5", "tracking.experiment_name=outage", "test=false",
            "trainer.limit_train_batches=4", "trainer.limit_val_batches=1"]
    output = tmp_path / "train.log"
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=step_env(server.uri),
                            stdout=output.open("w"), stderr=subprocess.STDOUT, text=True)
    client = MlflowClient(server.uri)
    try:
        deadline = time.monotonic() + 120
        run_id = None
        while time.monotonic() < deadline:
            exp = client.get_experiment_by_name("outage")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if runs and len(client.get_metric_history(runs[0].info.run_id, "val/acc")) >= 3:
                run_id = runs[0].info.run_id
                break
            time.sleep(0.3)
        assert run_id, "training never logged"
        down_at = time.time()
        server.stop()
        time.sleep(5)  # away this long and for its restart: training goes on, buffering, meanwhile
        server.start()
        up_at = time.time()
        proc.wait(timeout=300)
    finally:
        proc.kill()
        if server.proc is None:  # failed while it was away: the asserts below still read it
            server.start()
    err = output.read_text()
    try:
        assert proc.returncode == 0, err[-3000:]
        assert "buffering" in err
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        for key in ("train/loss", "train/acc", "val/acc", "val/loss"):
            history = client.get_metric_history(run_id, key)
            assert len(history) == EPOCHS, (key, len(history))
            assert len({m.step for m in history}) == EPOCHS, key
        stamps = [m.timestamp / 1000 for m in client.get_metric_history(run_id, "val/acc")]
        assert any(down_at < t < up_at for t in stamps), "training should go on while the server is away"
        # the checkpoint saved when training ended (all EPOCHS epochs done), after the outage, reached the server
        last = client.download_artifacts(run_id, "checkpoints/last/last.ckpt", str(tmp_path))
        assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == EPOCHS
    finally:
        server.stop()


def test_a_server_that_never_returns_leaves_everything_on_disk(tmp_path, sqlite_uri, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    store = MlflowClient(sqlite_uri)
    run_id = store.create_run(store.create_experiment("never")).info.run_id
    dead = MlflowClient(f"http://127.0.0.1:{free_port()}")
    logger = RunLogger(dead, run_id, flush_every_s=0, outage_grace_s=0.5, spool_dir=tmp_path / "unsynced")
    for epoch in range(5):
        logger.log_metrics({"val/acc": 0.5 + epoch / 10, "train/loss": 1.0 - epoch / 10}, step=epoch)
    staged = tmp_path / "last.ckpt"
    staged.write_bytes(b"checkpoint bytes")

    class Callback:  # the attributes ModelCheckpoint gives a logger
        best_model_path, last_model_path = "", str(staged)
        best_model_score = current_score = None
        monitor, mode, save_weights_only = "val/acc", "max", False

    logger.after_save_checkpoint(Callback())  # type: ignore[arg-type]
    with pytest.raises(TrackingError, match=r"python -m trainflow\.tracking\.sync .*unsynced"):
        logger.close()
    assert sync(tmp_path / "unsynced", sqlite_uri) == (10, 1)
    assert [m.value for m in store.get_metric_history(run_id, "val/acc")] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    assert store.list_artifacts(run_id, "checkpoints/last")
