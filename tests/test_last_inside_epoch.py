"""`last` saved inside an epoch (training/model_checkpoint.py), in process on Lightning's BoringModel.

When the saves happen and what they hold; a fit restarted from one trains
on exactly the batches, and ends with exactly the weights, of the fit that
was not stopped. tests/test_resume_mid_epoch.py does it through the step
and MLflow.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from trainflow.config.validate import check_targets
from trainflow.data.resumable_loader import ResumableDataLoader
from trainflow.errors import ConfigError
from trainflow.training.model_checkpoint import ModelCheckpoint
from trainflow.training.resume import MetricStates, RngState

BATCHES = 7  # an epoch (limit_train_batches)


class ShuffledBoring(BoringModel):
    """BoringModel on 64 random rows, shuffled by the resumable loader, with an epoch-long metric sum
    and a plateau scheduler."""

    def __init__(self) -> None:
        super().__init__()
        from torchmetrics import SumMetric

        self.rows, self.val_rows = RandomDataset(32, 64), RandomDataset(32, 64)  # made once: same in every fit
        self.seen = SumMetric()  # sums over the epoch, like a classifier's train loss

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.seen.update(batch.sum())
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().validation_step(batch, batch_idx)
        self.log("val_loss", out["x"])
        return out

    def configure_optimizers(self) -> Any:
        # cut the lr after every epoch (never "better" in mode max): an epoch end that skips it shows in the weights
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=0, factor=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}

    def on_train_epoch_end(self) -> None:
        self.epoch_sums = [*getattr(self, "epoch_sums", []), float(self.seen.compute())]
        self.seen.reset()

    def train_dataloader(self) -> ResumableDataLoader:
        return ResumableDataLoader(self.rows, shuffle=True, batch_size=4)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_rows, batch_size=4)


class Record(Callback):
    """Every training batch (epoch, index, data) and every checkpoint (global step, loader position)."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, float]] = []
        self.saves: list[tuple[int, dict[str, int]]] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batches.append((trainer.current_epoch, batch_idx, float(batch.sum())))

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        [position] = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
        self.saves.append((trainer.global_step, dict(position)))


class SendAt(Callback):
    def __init__(self, step: int, signum: signal.Signals) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def fit(folder: Path, checkpoint: ModelCheckpoint, *extra: Callback,
        ckpt_path: Path | None = None) -> tuple[ShuffledBoring, Record]:
    L.seed_everything(11, verbose=False)
    model, record = ShuffledBoring(), Record()
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, limit_train_batches=BATCHES, limit_val_batches=1,
                        logger=False, enable_model_summary=False, enable_progress_bar=False,
                        callbacks=[checkpoint, RngState(), MetricStates(), record, *extra], default_root_dir=folder)
    trainer.fit(model, ckpt_path=ckpt_path, weights_only=True)
    return model, record


def last_saver(folder: Path, **kwargs: Any) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0, **kwargs)


def test_last_is_saved_every_n_steps_but_never_at_an_epochs_last_batch(tmp_path: Path) -> None:
    _, record = fit(tmp_path, last_saver(tmp_path, last_every_n_steps=3))
    # steps 3, 6: batches 2 and 5 of epoch 0; 7: the boundary save as epoch 1 starts (not step 21, epoch 2's
    # last batch: Lightning would restore it as a finished epoch and skip its validation); 21: training's end
    assert [step for step, _ in record.saves] == [3, 6, 7, 9, 12, 14, 15, 18, 21]
    assert record.saves[0][1]["epoch"] == 0 and record.saves[0][1]["batches"] == 3
    assert record.saves[2][1]["epoch"] == 1 and record.saves[2][1]["batches"] == 0
    assert record.saves[3][1]["epoch"] == 1 and record.saves[3][1]["batches"] == 2


class Stopped(Exception):
    pass


class StopAfter(Callback):
    """Stop the fit as the batch after global step `step` starts: that step's `last` is written by then."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise Stopped


@pytest.mark.parametrize("stop_at", [3, 12])  # inside the first epoch; batch 4 of the second
def test_a_fit_restarted_from_a_step_checkpoint_trains_on_the_same_batches_to_the_same_weights(
        tmp_path: Path, stop_at: int) -> None:
    straight, whole = fit(tmp_path / "straight", last_saver(tmp_path / "straight", last_every_n_steps=stop_at))
    stopped = tmp_path / "stopped"
    with pytest.raises(Stopped):
        fit(stopped, last_saver(stopped, last_every_n_steps=stop_at), StopAfter(stop_at))

    resumed_dir = tmp_path / "resumed"
    resumed, rest = fit(resumed_dir, last_saver(resumed_dir, last_every_n_steps=stop_at),
                        ckpt_path=stopped / "last.ckpt")
    assert rest.batches == whole.batches[stop_at:], "the batch after the checkpoint, then the same ones"
    assert resumed.epoch_sums == straight.epoch_sums[-len(resumed.epoch_sums):], "the resumed epoch's sums too"
    for (name, a), (_, b) in zip(resumed.state_dict().items(), straight.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_signal_asks_for_last_at_the_end_of_the_step_it_lands_in(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    _, record = fit(tmp_path, last_saver(tmp_path, last_on_signal="SIGUSR1"), SendAt(4, signal.SIGUSR1))
    assert [step for step, _ in record.saves] == [4, 7, 14, 21]
    assert record.saves[0][1] == {"seed": 11, "epoch": 0, "batches": 4}
    assert signal.getsignal(signal.SIGUSR1) == before, "the fit's handler is gone with the fit"


@pytest.mark.parametrize(("minutes", "steps"), [
    (1e-9, list(range(1, 22))),  # due at every step: each step once, an epoch's last one by its boundary save
    (60.0, [7, 14, 21]),  # never due in a short fit: the boundary saves only
])
def test_last_is_saved_by_the_clock(tmp_path: Path, minutes: float, steps: list[int]) -> None:
    _, record = fit(tmp_path, last_saver(tmp_path, last_every_n_minutes=minutes))
    assert [step for step, _ in record.saves] == steps


@pytest.mark.parametrize(("key", "value", "says"), [
    ("last_every_n_steps", 0, "a number of steps >= 1"),
    ("last_every_n_minutes", -1.0, "minutes > 0"),
    ("last_on_signal", "SIGNOPE", "not a signal name"),
    ("last_on_signal", "SIGTERM", "it stops the step where it lands"),
])
def test_a_bad_inside_epoch_setting_is_named(tmp_path: Path, key: str, value: Any, says: str) -> None:
    with pytest.raises(ConfigError, match=f"callbacks.model_checkpoint.{key}={value}: {says}"):
        last_saver(tmp_path, **{key: value})


@pytest.mark.parametrize("imported", [True, False])  # the step's check, and the precheck that reads the source
@pytest.mark.parametrize(("setting", "named"), [
    ({"last_every_n_steps": "often"}, "callbacks.model_checkpoint.last_every_n_steps"),
    ({"last_every_n_step": 5}, "callbacks.model_checkpoint.last_every_n_step: not a parameter"),
])
def test_the_config_check_knows_the_inside_epoch_keys(imported: bool, setting: dict[str, Any], named: str) -> None:
    node = {"_target_": "trainflow.training.model_checkpoint.ModelCheckpoint", **setting}
    with pytest.raises(ConfigError, match=named):
        check_targets(OmegaConf.create({"callbacks": {"model_checkpoint": node}}), imported=imported)
