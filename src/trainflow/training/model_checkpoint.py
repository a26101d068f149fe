"""Lightning's ModelCheckpoint, with `save_last` saving the last epoch again.

Since Lightning 2.6, `save_last=True` writes `last.ckpt` only in a step where
a top-k checkpoint was saved too. With `save_top_k: 1` on a validation metric
that is the best epoch, not the last one: a run killed at epoch 150 whose best
was epoch 9 resumes from epoch 9, and an outage's checkpoint upload sends a
stale file. trainflow promises that a kill loses at most one epoch, so `last`
is saved at every checkpointing point where Lightning skipped it.

The class keeps Lightning's name: its callback state key (and so resume's
lookup of checkpoint state) reads the same. That key is kept once computed:
Lightning formats it (a dict's repr, ~3 µs) for every hook it calls on the
callback, six times a training step, while what it is made of never changes
after construction (it is recomputed if it does).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


class ModelCheckpoint(LightningModelCheckpoint):
    _key: tuple[tuple[Any, ...], str] | None = None

    @property
    def state_key(self) -> str:
        parts = (self.monitor, self.mode, self._every_n_train_steps, self._every_n_epochs, self._train_time_interval)
        if self._key is None or self._key[0] != parts:
            self._key = (parts, super().state_key)
        return self._key[1]

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_skipped(trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_skipped(trainer)

    def _save_last_if_skipped(self, trainer: Any) -> None:
        # a save in this step (top-k, or last by Lightning itself) makes this skip
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
