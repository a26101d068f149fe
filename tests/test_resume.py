"""Resume: an interrupted deterministic run, continued in place, ends like an uninterrupted one.

"Like" means the whole history: every metric at every step equals the
uninterrupted run's (1e-6), wherever the signal landed. The moments are
chosen by a config-enabled callback (`trainflow.training.faults.SignalAt`)
that signals its own process there, so no kill depends on timing.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest
from mlflow import MlflowClient

from helpers import ROOT, all_runs, mlflow_run, new_sqlite_store, run_step_here, step_env
from servers import proc_state
from trainflow.tracking import tags as tag

pytestmark = pytest.mark.slow

EPOCHS = 8
ARGS = ["steps/train.py", "experiment=example", f"trainer.max_epochs={EPOCHS}", f"trainer.min_epochs={EPOCHS}",
        "trainer.deterministic=true", "extras.print_config=false", "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null", "trainer.enable_progress_bar=false", "registry.log_model=false",
        "tracking.flush_every_s=0", "callbacks.early_stopping=null", "tags=[resume]",
        # a plateau scheduler that cuts the lr after every epoch (val/loss never rises: never "better"
        # in mode max): a resume that skips one of its steps shows in every later metric
        "model.scheduler.mode=max", "model.scheduler.patience=0", "model.scheduler.factor=0.7"]
FINAL = ("test/acc", "test/loss", "val/acc", "val/loss", "val/acc_best", "train/loss", "train/acc")
# moment, epoch, batch: where SignalAt sends SIGTERM
KILL_POINTS = [
    ("sanity_check", 0, 0),  # before any epoch: nothing to resume from, the fit starts over
    ("train_batch", 3, 5),  # mid training epoch
    ("validation_batch", 4, 1),  # mid validation, after some of its metrics are computed
    ("checkpoint_save", 5, 0),  # inside the save of epoch 5's `last` (at the end of epoch 4)
]

History = dict[str, dict[int, list[float]]]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def full_history(client: MlflowClient, run_id: str) -> History:
    """Every value of every metric by step; wall times (`time/...`) and the machine's load (`system/...`,
    sampled by the clock, so a slower run has more samples) are no part of the result."""
    found: History = {}
    for key in client.get_run(run_id).data.metrics:
        if key.startswith(("time/", "system/")):
            continue
        by_step: dict[int, list[float]] = defaultdict(list)
        for step, value in history(client, run_id, key):
            by_step[step].append(value)
        found[key] = dict(by_step)
    return found


def assert_same_history(got: History, expected: History) -> None:
    """Same metrics, same steps, and every value logged at a step equal (1e-6) to the reference's.

    A resumed run logs an epoch again when the kill came after its metrics
    were sent but before its checkpoint: then a step holds two equal values.
    """
    assert sorted(got) == sorted(expected)
    for key, steps in expected.items():
        assert sorted(got[key]) == sorted(steps), key
        for step, values in steps.items():
            for a, b in [(g, e) for g in got[key][step] for e in values]:
                assert abs(a - b) <= 1e-6, f"{key} at step {step}: {got[key][step]} vs {values}"


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One uninterrupted run: (store URI, run id)."""
    uri = new_sqlite_store(tmp_path_factory.mktemp("resume"))
    done = run_step_here([*ARGS, "tracking.experiment_name=straight"], uri)
    assert done.returncode == 0, done.stderr[-2000:]
    [run] = [r for r in all_runs(uri) if r.data.tags.get(tag.STEP) == "train"]
    return uri, run.info.run_id


def only_run(uri: str, experiment: str) -> str:
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return str(run.info.run_id)


@pytest.mark.parametrize(("moment", "epoch", "batch"), KILL_POINTS, ids=[k[0] for k in KILL_POINTS])
def test_resume_after_a_kill_at_any_moment_repeats_the_whole_history(straight, moment: str, epoch: int,
                                                                    batch: int) -> None:
    uri, reference = straight
    client = MlflowClient(uri)
    fault = ("+callbacks.fault={_target_:trainflow.training.faults.SignalAt,"
             f"moment:{moment},epoch:{epoch},batch:{batch}}}")
    killed = run_step_here([*ARGS, f"tracking.experiment_name=killed-{moment}", fault], uri)
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr[-2000:]
    interrupted = only_run(uri, f"killed-{moment}")
    assert client.get_run(interrupted).info.status == "KILLED"
    assert len(history(client, interrupted, "val/acc")) < EPOCHS

    resumed = run_step_here([*ARGS, f"tracking.experiment_name=killed-{moment}", f"resume={interrupted}"], uri)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert client.get_run(interrupted).info.status == "FINISHED"
    assert_same_history(full_history(client, interrupted), full_history(client, reference))


def stopped(proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Whether `proc` stopped itself (state T) within `timeout`; False as soon as it has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if proc_state(proc.pid) == "T":
            return True
        time.sleep(0.1)
    return False


def test_interrupted_then_resumed_matches_uninterrupted(straight, tmp_path) -> None:
    """A SIGTERM from outside, and the resume through `mlflow run -P resume=...`.

    The step stops itself (SIGSTOP) mid-epoch 3 and the SIGTERM is sent while it is stopped: sent when the
    test saw epoch 3's metrics instead, it came after the whole fit on a loaded machine, where the test's
    polling falls behind the step.
    """
    uri, reference_id = straight
    client = MlflowClient(uri)
    pause = ("+callbacks.fault={_target_:trainflow.training.faults.SignalAt,moment:train_batch,epoch:3,batch:5,"
             "signal_name:SIGSTOP}")
    proc = subprocess.Popen([sys.executable, *ARGS, "tracking.experiment_name=interrupted", pause], cwd=ROOT,
                            env=step_env(uri), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if not stopped(proc):
            pytest.fail(f"the step never reached epoch 3 (exit code {proc.poll()}): nothing to interrupt")
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    runs = [r for r in all_runs(uri) if client.get_experiment(r.info.experiment_id).name == "interrupted"]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    interrupted = runs[0].info.run_id
    killed = client.get_run(interrupted)
    assert killed.info.status == "KILLED" and "SIGTERM" in killed.data.tags[tag.ERROR]
    assert "interrupted by SIGTERM" in err
    epochs_done = len(history(client, interrupted, "val/acc"))
    assert epochs_done < EPOCHS, "the interruption came too late to test anything"
    assert {a.path for a in client.list_artifacts(interrupted, "checkpoints/last")} >= {"checkpoints/last/last.ckpt"}

    # through `mlflow run -P resume=...`: the run MLflow made is closed, pointing at the one resumed
    resumed = mlflow_run("train", [*ARGS[1:], f"resume={interrupted}"], uri, experiment="relaunch")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    [launched] = [r for r in all_runs(uri) if client.get_experiment(r.info.experiment_id).name == "relaunch"]
    assert launched.info.status == "FINISHED" and launched.data.tags[tag.RESUMED_INTO] == interrupted
    run = client.get_run(interrupted)
    assert run.info.status == "FINISHED" and run.data.tags[tag.RESUMES] == "1"
    reference = client.get_run(reference_id)
    for key in FINAL:
        assert run.data.metrics[key] == pytest.approx(reference.data.metrics[key], abs=1e-6), key
    # the whole history lives in the one run: every epoch's validation, once per step
    steps = [s for s, _ in history(client, interrupted, "val/acc")]
    assert sorted(set(steps)) == sorted({s for s, _ in history(client, reference_id, "val/acc")})
    assert_same_history(full_history(client, interrupted), full_history(client, reference_id))


def test_a_run_early_stopping_ended_killed_in_its_test_resumes_into_the_test(tmp_path) -> None:
    """Early stopping's verdict is loop state too: the resumed run tests, it does not train on."""
    uri = new_sqlite_store(tmp_path)
    client = MlflowClient(uri)
    # val/acc can never improve by 0.5: early stopping ends the fit after epoch 1 of 8
    stopping = [a for a in ARGS if a not in ("callbacks.early_stopping=null", f"trainer.min_epochs={EPOCHS}")]
    stopping += ["trainer.min_epochs=1", "callbacks.early_stopping.patience=1",
                 "callbacks.early_stopping.min_delta=0.5"]
    straight = run_step_here([*stopping, "tracking.experiment_name=straight"], uri)
    assert straight.returncode == 0, straight.stderr[-2000:]
    reference = only_run(uri, "straight")
    assert len(history(client, reference, "val/acc")) == 2

    fault = "+callbacks.fault={_target_:trainflow.training.faults.SignalAt,moment:test_batch,batch:1}"
    killed = run_step_here([*stopping, "tracking.experiment_name=killed", fault], uri)
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr[-2000:]
    interrupted = only_run(uri, "killed")
    assert "test/acc" not in client.get_run(interrupted).data.metrics
    resumed = run_step_here([*stopping, "tracking.experiment_name=killed", f"resume={interrupted}"], uri)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_history(full_history(client, interrupted), full_history(client, reference))
