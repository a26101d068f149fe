"""The train and evaluate steps in-process: one run per step, tracked as the contract says."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from helpers import TINY, all_runs
from trainflow.tracking import tags as tag
from trainflow.tracking.run import step_run
from trainflow.training.evaluate import evaluate
from trainflow.training.train import train


def run_train(compose, tmp_path: Path, overrides: list[str]):
    cfg = compose("train", [*TINY, *overrides], output_dir=tmp_path / "out")
    with step_run("train", cfg) as run:
        result = train(cfg, run)
    return run, result


def check_train_run(uri: str, run_id: str) -> None:
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "test/acc", "test/loss"):
        assert key in run.data.metrics, key
    tags = run.data.tags
    assert tags[tag.STEP] == "train"
    # the name says what this run changed; presentation keys (progress bar, printing, registry) are left out
    assert tags["mlflow.runName"] == \
        "train-example-digits max_epochs=1 limit_train_batches=4 limit_val_batches=2 limit_test_batches=2"
    assert tags[tag.GIT_DIRTY] in ("true", "false")
    assert "trainer.max_epochs=1" in tags[tag.OVERRIDES]
    assert tags["tag.digits"] == "true"
    assert run.data.params["trainer.max_epochs"] == "1"
    assert run.data.params["model.optimizer.lr"] == "0.002"
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "overrides.yaml", "checkpoints"} <= top
    for alias in ("best", "last"):
        files = {Path(a.path).name for a in client.list_artifacts(run_id, f"checkpoints/{alias}")}
        assert files == {f"{alias}.ckpt", "metadata.yaml"}, files
    # TINY logs no model (registry.log_model=false): the best checkpoint is what train hands on
    assert tags[tag.OUTPUT] == f"runs:/{run_id}/checkpoints/best/best.ckpt"
    meta = yaml.safe_load(Path(client.download_artifacts(run_id, "checkpoints/best/metadata.yaml")).read_text())
    assert meta["monitor"] == "val/acc" and meta["mode"] == "max" and meta["score"] is not None
    config = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml")).read_text())
    assert config["trainer"]["max_epochs"] == 1 and "hydra" not in config


def test_train_one_epoch_on_the_embedded_store(compose, tmp_path, sqlite_uri, tracking_env) -> None:
    tracking_env(sqlite_uri)
    run, result = run_train(compose, tmp_path, [])
    assert [r.info.run_id for r in all_runs(sqlite_uri)] == [run.run_id]
    check_train_run(sqlite_uri, run.run_id)
    assert result.monitored == pytest.approx(MlflowClient(sqlite_uri).get_run(run.run_id).data.metrics["val/acc_best"])
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    # artifacts of the embedded store sit beside it, not in the repository's cwd
    store_dir = Path(sqlite_uri.removeprefix("sqlite:///")).parent
    artifact_uri = MlflowClient(sqlite_uri).get_run(run.run_id).info.artifact_uri
    assert artifact_uri.startswith((store_dir / "mlruns").as_uri() + "/"), artifact_uri


def test_train_one_epoch_against_a_server(compose, tmp_path, mlflow_server, tracking_env) -> None:
    tracking_env(mlflow_server.uri)
    run, _ = run_train(compose, tmp_path, ["tracking.experiment_name=train-on-server"])
    check_train_run(mlflow_server.uri, run.run_id)
    assert MlflowClient(mlflow_server.uri).get_run(run.run_id).info.artifact_uri.startswith("mlflow-artifacts:")


def test_fast_dev_run_tests_current_weights(compose, tmp_path, sqlite_uri, tracking_env, caplog) -> None:
    tracking_env(sqlite_uri)
    run, result = run_train(compose, tmp_path, ["debug=fdr"])
    assert result.best_checkpoint is None
    assert "test/acc" in result.metrics
    assert "No best checkpoint found" in caplog.text
    tags = MlflowClient(sqlite_uri).get_run(run.run_id).data.tags
    assert tags["tag.debug"] == "true"


def test_failure_marks_the_run_failed_with_the_error(compose, tmp_path, sqlite_uri, tracking_env) -> None:
    tracking_env(sqlite_uri)
    cfg = compose("train", [*TINY, "+model.optimizer.lrr=1"], output_dir=tmp_path)
    with pytest.raises(SystemExit) as info, step_run("train", cfg) as run:
        train(cfg, run)
    assert info.value.code == 1
    failed = MlflowClient(sqlite_uri).get_run(run.run_id)
    assert failed.info.status == "FAILED"
    assert "model.optimizer.lrr" in failed.data.tags[tag.ERROR]


@pytest.mark.parametrize(("code", "status"), [(3, "FAILED"), (0, "FINISHED"), (None, "FINISHED")])
def test_sys_exit_inside_a_step_keeps_its_code(compose, tmp_path, sqlite_uri, tracking_env, code, status) -> None:
    """A step's own sys.exit(n) is no Ctrl-C: its code and a matching status, not KILLED and 130."""
    tracking_env(sqlite_uri)
    cfg = compose("train", TINY, output_dir=tmp_path)
    with pytest.raises(SystemExit) as info, step_run("train", cfg) as run:
        raise SystemExit(code)
    assert info.value.code == code
    ended = MlflowClient(sqlite_uri).get_run(run.run_id)
    assert ended.info.status == status
    assert ended.data.tags.get(tag.ERROR) == (f"exited with status {code}" if code else None)


def test_a_signal_while_the_run_is_made_ends_it_killed(compose, tmp_path, sqlite_uri, tracking_env,
                                                        monkeypatch) -> None:
    """SIGTERM lands during the run's set-up (as a sweep's Ctrl-C does between trials): the run that then
    exists ends KILLED with exit 143, not RUNNING forever."""
    import os
    import signal

    import trainflow.tracking.placement as contract

    def start_then_sigterm(*args, **kwargs):
        made = real_start(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return made

    real_start = contract.attach_or_start
    monkeypatch.setattr(contract, "attach_or_start", start_then_sigterm)
    tracking_env(sqlite_uri)
    cfg = compose("train", TINY, output_dir=tmp_path)
    with pytest.raises(SystemExit) as info, step_run("train", cfg):
        pytest.fail("the step must not start")
    assert info.value.code == 128 + signal.SIGTERM
    [run] = all_runs(sqlite_uri)
    assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags[tag.ERROR]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the handlers step_run found come back"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt
def test_a_ctrl_c_python_dropped_mid_fit_still_stops_it_at_the_next_batch(compose, tmp_path, sqlite_uri,
                                                                          tracking_env) -> None:
    """Ctrl-C landing in a finalizer is dropped by Python (tracking/signals.py); the fit stops at the next
    batch anyway, its run KILLED, exit 130. (A dropped SIGTERM Lightning catches itself: its own handler,
    which calls ours, sets a flag its loop reads.)"""
    import signal

    tracking_env(sqlite_uri)
    dropped = ("+callbacks.fault={_target_:trainflow.training.faults.SignalAt,moment:train_batch,epoch:1,batch:1,"
               "signal_name:SIGINT,in_finalizer:true}")
    cfg = compose("train", [*TINY, "trainer.max_epochs=3", dropped], output_dir=tmp_path)
    with pytest.raises(SystemExit) as info, step_run("train", cfg) as run:
        train(cfg, run)
    assert info.value.code == 128 + signal.SIGINT
    ended = MlflowClient(sqlite_uri).get_run(run.run_id)
    assert ended.info.status == "KILLED" and "SIGINT" in ended.data.tags[tag.ERROR]
    assert len(MlflowClient(sqlite_uri).get_metric_history(run.run_id, "val/acc")) == 1, "stopped in epoch 1"


def test_an_error_that_replaced_the_ctrl_c_still_ends_the_run_killed(compose, tmp_path, sqlite_uri,
                                                                     tracking_env) -> None:
    """The KeyboardInterrupt unwinds through a `finally` that fails, and Python keeps that newer error (a sweep's
    trial once failed so, with a ConfigKeyError, at its Ctrl-C): the step was stopped all the same, its run
    KILLED, exit 130, and the error that replaced the interrupt kept in error.txt."""
    import os
    import signal

    tracking_env(sqlite_uri)
    cfg = compose("train", TINY, output_dir=tmp_path)
    with pytest.raises(SystemExit) as info, step_run("train", cfg) as run:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 5)  # the handler raises here at the latest
        finally:
            raise RuntimeError("cleanup on half-changed state")
    assert info.value.code == 128 + signal.SIGINT
    client = MlflowClient(sqlite_uri)
    ended = client.get_run(run.run_id)
    assert ended.info.status == "KILLED" and ended.data.tags[tag.ERROR] == "interrupted by SIGINT"
    trace = Path(client.download_artifacts(run.run_id, "error.txt", str(tmp_path / "down"))).read_text()
    assert "RuntimeError: cleanup on half-changed state" in trace and "KeyboardInterrupt" in trace


def test_evaluate_a_logged_checkpoint_in_its_own_run(compose, tmp_path, sqlite_uri, tracking_env) -> None:
    tracking_env(sqlite_uri)
    trained, _ = run_train(compose, tmp_path, [])
    cfg = compose("evaluate", ["experiment=example", "extras.print_config=false",
                               f"ckpt_path=runs:/{trained.run_id}/checkpoints/best"], output_dir=tmp_path / "ev")
    with step_run("evaluate", cfg) as run:
        result = evaluate(cfg, run)
    assert run.run_id != trained.run_id
    evaluated = MlflowClient(sqlite_uri).get_run(run.run_id)
    assert evaluated.info.status == "FINISHED"
    assert evaluated.data.metrics["test/acc"] == pytest.approx(result.metrics["test/acc"])
    assert evaluated.data.tags[tag.STEP] == "evaluate"
