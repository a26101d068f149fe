"""Lightning's ModelCheckpoint, with `last.ckpt` saved at every epoch boundary and only there.

Two things about Lightning 2.6's own `save_last` break trainflow's promises:

- it writes `last.ckpt` only in a step where a top-k checkpoint was saved
  too: with `save_top_k: 1` that is the best epoch, not the last one, so a run
  killed at epoch 150 whose best was epoch 9 would resume from epoch 9;
- it writes it at the end of validation, inside the epoch: the epoch's
  scheduler step and end-of-epoch hooks have not run yet, and a fit restarted
  from such a checkpoint skips the scheduler step for that epoch ("plateau
  schedulers need metrics the checkpoint lacks"). A resumed run then drops
  its learning rate one epoch late and drifts from an uninterrupted one.

So `last` is saved when the next epoch starts (before its shuffle draws any
random number: the RNG states saved with it are exactly what that epoch
will use) and when training ends; Lightning's saves inside the epoch write
only the top-k (`best`) file. A resume then restarts "on epoch start",
which Lightning replays exactly.

The class keeps Lightning's name: its callback state key (and so resume's
lookup of checkpoint state) reads the same. That key is kept once computed:
Lightning formats it (a dict's repr, ~3 µs) for every hook it calls on the
callback, six times a training step, while what it is made of never changes
after construction (it is recomputed if it does). Its batch-end hook, which
only saves every n steps or every so often, is left out of Lightning's
per-batch dispatch when neither is configured (`idle_batch_hooks`).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

# whether early stopping had ended the fit: the one piece of loop state Lightning does not save
_STOP_KEY = "trainflow_should_stop"


class ModelCheckpoint(LightningModelCheckpoint):
    _at_epoch_boundary = False
    _key: tuple[tuple[Any, ...], str] | None = None

    @property
    def state_key(self) -> str:
        parts = (self.monitor, self.mode, self._every_n_train_steps, self._every_n_epochs, self._train_time_interval)
        if self._key is None or self._key[0] != parts:
            self._key = (parts, super().state_key)
        return self._key[1]

    def idle_batch_hooks(self) -> list[str]:
        """Hooks training/idle_hooks.py may hide: batch end, unless saving by steps or by time."""
        by_batch = self._every_n_train_steps >= 1 or self._train_time_interval is not None
        return [] if by_batch else ["on_train_batch_end"]

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        checkpoint[_STOP_KEY] = bool(trainer.should_stop)

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # a run that early stopping ended, killed while testing, resumes into its test, not another epoch
        trainer.should_stop = bool(checkpoint.get(_STOP_KEY, False))

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if trainer.fit_loop.restarted_on_epoch_start:
            # Resumed from a `last` saved here: the epoch is a fresh one. Left
            # "restarting", Lightning would skip this epoch's scheduler step.
            trainer.fit_loop.restarting = False
        if trainer.current_epoch > 0:
            _enter_epoch(trainer)
            self._save_last_at_boundary(trainer)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._save_last_at_boundary(trainer)

    def _save_last_checkpoint(self, trainer: Any, monitor_candidates: dict[str, Any]) -> None:
        if self._at_epoch_boundary:
            super()._save_last_checkpoint(trainer, monitor_candidates)

    def _save_last_at_boundary(self, trainer: Any) -> None:
        # Lightning's own skip test also skips a step already saved (by top-k): not a reason here
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking:
            return
        self._at_epoch_boundary = True
        try:
            super()._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self._at_epoch_boundary = False


def _enter_epoch(trainer: Any) -> None:
    """Reset the per-epoch batch counters now rather than a moment later.

    The epoch loop resets them when it starts the epoch, just after this
    hook; saved before that, the checkpoint would say the new epoch's batches
    are all done, and Lightning would restart it as an empty epoch. These are
    the same resets the loop makes, so an uninterrupted fit is unchanged.
    """
    loop = trainer.fit_loop.epoch_loop
    loop.batch_progress.reset_on_run()
    loop.scheduler_progress.reset_on_run()
    loop.automatic_optimization.optim_progress.reset_on_run()
    loop.val_loop.batch_progress.total.reset()
