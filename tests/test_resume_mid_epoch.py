"""Resume from a `last` saved inside an epoch: the next batch, the same batches, the same history.

A run saving `last` every few steps is killed mid-epoch (by SignalAt, at a
chosen batch); `resume=<run>` continues it in the same MLflow run from the
step after that checkpoint, and every metric at every step equals the
uninterrupted run's (1e-6). The resumed process says where it went on
(`resume: run ... continues at epoch E, batch B` in its log): with the equal history,
that shows it neither started the epoch over nor skipped batches.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from mlflow import MlflowClient

from helpers import all_runs, new_sqlite_store, run_step_here
from test_resume import assert_same_history, full_history, history, only_run
from trainflow.tracking import tags as tag

pytestmark = pytest.mark.slow

EPOCHS = 3
EVERY = 5  # digits trains on 20 batches an epoch: `last` at batches 4, 9 and 14 of each
ARGS = ["steps/train.py", "experiment=example", f"trainer.max_epochs={EPOCHS}", f"trainer.min_epochs={EPOCHS}",
        "trainer.deterministic=true", "extras.print_config=false", "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null", "trainer.enable_progress_bar=false", "registry.log_model=false",
        "tracking.flush_every_s=0", "callbacks.early_stopping=null", "tags=[resume]",
        # the plateau scheduler steps every epoch: a resumed epoch that skipped it shows in every later metric
        "model.scheduler.mode=max", "model.scheduler.patience=0", "model.scheduler.factor=0.7"]
STEPS = [f"callbacks.model_checkpoint.last_every_n_steps={EVERY}"]
# epoch, batch where SIGTERM lands (after that batch's step, before any save at it);
# where the resumed run goes on: epoch, batch, global step
KILL_POINTS = {
    "first_epoch": ((0, 12), (0, 10, 10)),  # the save at batch 9 (step 10)
    "just_after_a_step_checkpoint": ((1, 10), (1, 10, 30)),  # killed at the batch after the save at batch 9
    "before_the_epochs_first_save": ((2, 3), (2, 0, 40)),  # back to the `last` saved as epoch 2 began
}


def fault(name: str, epoch: int, batch: int, signal_name: str = "SIGTERM") -> str:
    return (f"+callbacks.{name}={{_target_:trainflow.training.faults.SignalAt,moment:train_batch,"
            f"epoch:{epoch},batch:{batch},signal_name:{signal_name}}}")


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One uninterrupted run, saving `last` every EVERY steps like the killed ones: (store URI, run id)."""
    uri = new_sqlite_store(tmp_path_factory.mktemp("resume-mid-epoch"))
    done = run_step_here([*ARGS, *STEPS, "tracking.experiment_name=straight"], uri)
    assert done.returncode == 0, done.stderr[-2000:]
    [run] = [r for r in all_runs(uri) if r.data.tags.get(tag.STEP) == "train"]
    return uri, run.info.run_id


def kill_and_resume(uri: str, experiment: str, settings: list[str], faults: list[str],
                    folder: Path) -> tuple[str, str]:
    """Run until a fault's SIGTERM, then resume in the same run: (run id, the resumed process's log)."""
    client = MlflowClient(uri)
    killed = run_step_here([*ARGS, *settings, f"tracking.experiment_name={experiment}", *faults], uri)
    assert killed.returncode == 128 + signal.SIGTERM, killed.stderr[-2000:]
    interrupted = only_run(uri, experiment)
    assert client.get_run(interrupted).info.status == "KILLED"
    assert len(history(client, interrupted, "val/acc")) < EPOCHS

    resumed = run_step_here([*ARGS, *settings, f"tracking.experiment_name={experiment}", f"resume={interrupted}",
                             f"hydra.run.dir={folder}"], uri)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert client.get_run(interrupted).info.status == "FINISHED"
    return interrupted, (folder / "train.log").read_text()


@pytest.mark.parametrize("case", list(KILL_POINTS))
def test_a_kill_mid_epoch_resumes_at_the_next_batch_with_the_same_history(straight, case: str,
                                                                          tmp_path: Path) -> None:
    uri, reference = straight
    (epoch, batch), (at_epoch, at_batch, at_step) = KILL_POINTS[case]
    run_id, err = kill_and_resume(uri, case, STEPS, [fault("fault", epoch, batch)], tmp_path)
    assert f"continues at epoch {at_epoch}, batch {at_batch} (global step {at_step})" in err, err[-3000:]
    client = MlflowClient(uri)
    assert_same_history(full_history(client, run_id), full_history(client, reference))


def test_a_checkpoint_asked_for_by_signal_resumes_exactly(straight, tmp_path: Path) -> None:
    """SIGUSR1 (SLURM's warning before its time limit) saves `last` at the end of the step it lands in."""
    uri, reference = straight
    warn_then_kill = [fault("warning", 1, 6, "SIGUSR1"), fault("fault", 1, 8)]
    run_id, err = kill_and_resume(uri, "on_signal", ["callbacks.model_checkpoint.last_on_signal=SIGUSR1"],
                                  warn_then_kill, tmp_path)
    assert "continues at epoch 1, batch 7 (global step 27)" in err, err[-3000:]
    client = MlflowClient(uri)
    assert_same_history(full_history(client, run_id), full_history(client, reference))
