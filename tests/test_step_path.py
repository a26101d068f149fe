"""What runs on every training step besides the model: progress bar, profiler, checkpoint callback, idle hooks."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import EarlyStopping, RichModelSummary
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from omegaconf import OmegaConf

from trainflow.training.idle_hooks import BATCH_HOOKS, hide_idle_batch_hooks, idle_batch_hooks
from trainflow.training.model_checkpoint import ModelCheckpoint
from trainflow.training.profiler import NoProfiler, profiler_kwargs
from trainflow.training.progress import ThrottledRichProgressBar


class Completed(Callback):
    """The train bar's completed count after each batch (runs after the bar: listed later)."""

    def __init__(self, bar: ThrottledRichProgressBar) -> None:
        self.bar = bar
        self.seen: list[int] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        assert self.bar.progress is not None and self.bar.train_progress_bar_id is not None
        self.seen.append(int(self.bar.progress.tasks[self.bar.train_progress_bar_id].completed))


def fit_with_clock(clock: Callable[[], float], tmp_path: Path) -> list[int]:
    bar = ThrottledRichProgressBar(refresh_rate=2, clock=clock)
    seen = Completed(bar)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=6, limit_val_batches=2, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, callbacks=[bar, seen],
                        default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    return seen.seen


def test_a_stopped_clock_updates_only_the_first_and_last_batch_of_each_epoch(tmp_path) -> None:
    # the sanity check's validation batch took the first update; after it, only epochs' last batches are due
    assert fit_with_clock(lambda: 0.0, tmp_path) == [0, 0, 0, 0, 0, 6] * 2


def test_a_clock_past_the_interval_updates_every_batch(tmp_path) -> None:
    ticks = iter(range(10_000))
    assert fit_with_clock(lambda: float(next(ticks)), tmp_path) == [1, 2, 3, 4, 5, 6] * 2


def test_the_checkpoint_state_key_is_lightnings_and_follows_a_changed_monitor(tmp_path) -> None:
    ours = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max", every_n_epochs=1)
    theirs = LightningModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max", every_n_epochs=1)
    assert ours.state_key == theirs.state_key == ours.state_key
    ours.monitor = theirs.monitor = "val/loss"
    assert ours.state_key == theirs.state_key and "val/loss" in ours.state_key


def test_no_profiler_unless_one_is_configured_and_a_fit_runs_under_it(tmp_path) -> None:
    assert isinstance(profiler_kwargs(OmegaConf.create({"profiler": None}))["profiler"], NoProfiler)
    assert profiler_kwargs(OmegaConf.create({"profiler": "simple"})) == {}
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, **profiler_kwargs(OmegaConf.create({})))
    trainer.fit(BoringModel())
    assert isinstance(trainer.profiler, NoProfiler) and trainer.global_step == 3


class LoggedBoringModel(BoringModel):
    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().validation_step(batch, batch_idx)
        self.log("valid_loss", out["x"])
        return out


class BatchEnds(Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.count += 1


def test_idle_batch_hooks_are_the_inherited_ones_and_the_checkpoints_batch_end_unless_it_saves_by_step(
        tmp_path) -> None:
    assert idle_batch_hooks(RichModelSummary()) == list(BATCH_HOOKS)
    assert "on_train_batch_end" not in idle_batch_hooks(BatchEnds())
    assert "on_train_batch_end" in idle_batch_hooks(ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1))
    for trigger in ({"every_n_train_steps": 2}, {"train_time_interval": timedelta(0)}):
        assert "on_train_batch_end" not in idle_batch_hooks(ModelCheckpoint(dirpath=tmp_path, **trigger))
    # Lightning's own ModelCheckpoint declares nothing: its batch end stays
    assert "on_train_batch_end" not in idle_batch_hooks(LightningModelCheckpoint(dirpath=tmp_path))


def test_a_fit_with_hidden_hooks_still_calls_and_saves_what_the_callbacks_do(tmp_path) -> None:
    by_epoch = ModelCheckpoint(dirpath=tmp_path / "epoch", filename="best", monitor="valid_loss")
    by_step = ModelCheckpoint(dirpath=tmp_path / "step", filename="{step}", every_n_train_steps=2, save_top_k=-1)
    ends, other = BatchEnds(), RichModelSummary()
    callbacks = [by_epoch, by_step, ends, EarlyStopping(monitor="valid_loss"), other]
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=4, limit_val_batches=1, logger=False,
                        enable_progress_bar=False, callbacks=callbacks, default_root_dir=tmp_path)
    hide_idle_batch_hooks(trainer.callbacks)
    assert by_epoch.on_train_batch_end is None and other.on_before_backward is None
    assert RichModelSummary().on_before_backward is not None  # the instance's, not the class's
    trainer.fit(LoggedBoringModel())  # Lightning skips a hook that is not callable: a call would raise
    assert ends.count == 8
    assert (tmp_path / "epoch" / "best.ckpt").is_file()
    assert sorted(p.name for p in (tmp_path / "step").iterdir()) == [f"step={n}.ckpt" for n in (2, 4, 6, 8)]
