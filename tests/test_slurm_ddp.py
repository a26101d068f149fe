"""DDP under SLURM: `srun -N1 --ntasks-per-node=2` of a train step, the default callbacks (progress bar included).

SLURM starts both ranks at once and Lightning's `SLURMEnvironment` reads
their ranks from `SLURM_PROCID`; rank zero opens the one run, rank one finds
it by its `trainflow.job` tag (tracking/ranks.py). Lightning disables the
progress bar on every rank but zero: that bar must still let the rank train.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel
from mlflow import MlflowClient

from helpers import ROOT, TINY, all_runs, new_sqlite_store, step_env
from servers import SlurmCluster
from trainflow.tracking import tags as tag
from trainflow.training.progress import ThrottledRichProgressBar


def test_a_disabled_bar_as_every_nonzero_rank_has_it_fits_validates_and_tests(tmp_path: Path) -> None:
    bar = ThrottledRichProgressBar(refresh_rate=2)
    bar.disable()  # what Lightning does on ranks other than zero
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=2,
                        limit_test_batches=2, logger=False, enable_checkpointing=False, enable_model_summary=False,
                        callbacks=[bar], default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    trainer.test(BoringModel(), verbose=False)
    assert trainer.global_step == 3 and bar.is_disabled and bar.progress is None


MODEL = "srun-digits"


@pytest.mark.slow
def test_srun_ddp_with_the_default_callbacks_makes_one_run_one_version_and_rank_zero_metrics(
        slurm: SlurmCluster, tmp_path: Path) -> None:
    uri = new_sqlite_store(tmp_path)
    quiet = ("registry.", "callbacks.rich_progress_bar", "trainer.enable_progress_bar", "callbacks.model_summary")
    overrides = [p for p in TINY if not p.startswith(quiet)]
    done = subprocess.run(
        ["srun", "-N1", "--ntasks-per-node=2", sys.executable, "steps/train.py", *overrides, "trainer=ddp_slurm",
         "trainer.max_epochs=2", f"registry.model_name={MODEL}"],
        cwd=ROOT, env=slurm.client_env(step_env(uri, OMP_NUM_THREADS="1")), capture_output=True, text=True,
        timeout=400, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    runs = all_runs(uri)
    assert len(runs) == 1, [r.data.tags.get("mlflow.runName") for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags[tag.JOB].startswith("slurm:")
    assert run.data.params["trainer.devices"] == "2"  # from the allocation, not the command line
    client = MlflowClient(uri)
    assert [str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")] == ["1"]
    # rank zero alone logs: one value per metric and step, two epochs of val/acc
    for key in ("train/loss", "val/acc", "test/acc"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps and len(steps) == len(set(steps)), (key, steps)
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2
    assert done.stdout.count("train output:") == 1
