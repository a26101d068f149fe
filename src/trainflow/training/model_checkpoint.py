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

Inside an epoch `last` is saved too when asked (`last_every_n_steps`,
`last_every_n_minutes`, `last_on_signal`), at the end of a training batch
that stepped the optimizer: nothing is half done there, and the train
loader's position, the RNG states and the epoch's metric sums
(training/resume.py) go with it, so a resume continues at the next batch.
Lightning's own `every_n_train_steps` / `train_time_interval` do not fit:
setting either stops `best` being chosen after every validation, and they
save top-k files between validations, from stale metrics. The last batch
of an epoch is never one of these saves: Lightning would restore it as a
finished epoch and skip its validation; the boundary save follows it anyway.

The class keeps Lightning's name: its callback state key (and so resume's
lookup of checkpoint state) reads the same. That key is kept once computed:
Lightning formats it (a dict's repr) for every hook it calls on the
callback, six times a training step, while what it is made of never changes
after construction (it is recomputed if it does). Its batch-end hook is left
out of Lightning's per-batch dispatch when no save inside the epoch is
configured (`idle_batch_hooks`).
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

from trainflow.errors import ConfigError

# whether early stopping had ended the fit: the one piece of loop state Lightning does not save
_STOP_KEY = "trainflow_should_stop"


class ModelCheckpoint(LightningModelCheckpoint):
    _saving_last = False  # a `last` save of ours is under way; Lightning's own are dropped
    _key: tuple[tuple[Any, ...], str] | None = None

    # Lightning's parameters spelt out, then ours: the config checks read this signature (from the
    # source, before torch is imported), so a misspelt key is refused as it is for Lightning's class
    def __init__(self, dirpath: str | Path | None = None, filename: str | None = None, monitor: str | None = None,
                 verbose: bool = False, save_last: bool | Literal["link"] | None = None, save_top_k: int = 1,
                 save_on_exception: bool = False, save_weights_only: bool = False, mode: str = "min",
                 auto_insert_metric_name: bool = True, every_n_train_steps: int | None = None,
                 train_time_interval: timedelta | None = None, every_n_epochs: int | None = None,
                 save_on_train_epoch_end: bool | None = None, enable_version_counter: bool = True,
                 last_every_n_steps: int | None = None, last_every_n_minutes: float | None = None,
                 last_on_signal: str | None = None) -> None:
        """`last_*`: also save `last` inside an epoch, every n optimizer steps, every so many minutes
        of training, or at the end of the step a signal lands in (e.g. SIGUSR1, SLURM's warning)."""
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor, verbose=verbose, save_last=save_last,
                         save_top_k=save_top_k, save_on_exception=save_on_exception,
                         save_weights_only=save_weights_only, mode=mode,
                         auto_insert_metric_name=auto_insert_metric_name, every_n_train_steps=every_n_train_steps,
                         train_time_interval=train_time_interval, every_n_epochs=every_n_epochs,
                         save_on_train_epoch_end=save_on_train_epoch_end,
                         enable_version_counter=enable_version_counter)
        key = "callbacks.model_checkpoint"
        if last_every_n_steps is not None and last_every_n_steps < 1:
            raise ConfigError(f"{key}.last_every_n_steps={last_every_n_steps}: a number of steps >= 1, or null")
        if last_every_n_minutes is not None and last_every_n_minutes <= 0:
            raise ConfigError(f"{key}.last_every_n_minutes={last_every_n_minutes}: minutes > 0, or null")
        if last_on_signal is not None and last_on_signal not in signal.Signals.__members__:
            raise ConfigError(f"{key}.last_on_signal={last_on_signal}: not a signal name (SIGUSR1, SIGUSR2, ...)")
        if last_on_signal in ("SIGTERM", "SIGINT"):  # the step's own handler ends it at once (tracking/run.py)
            raise ConfigError(f"{key}.last_on_signal={last_on_signal}: it stops the step where it lands; "
                              "use a signal sent before it (SIGUSR1, SIGUSR2)")
        self.last_every_n_steps = last_every_n_steps
        self.last_every_n_seconds = last_every_n_minutes * 60 if last_every_n_minutes is not None else None
        self.last_on_signal = signal.Signals[last_on_signal] if last_on_signal is not None else None
        self._last_requested = False
        self._last_saved_at = time.monotonic()
        self._handler_before: Any = None

    @property
    def state_key(self) -> str:
        parts = (self.monitor, self.mode, self._every_n_train_steps, self._every_n_epochs, self._train_time_interval)
        if self._key is None or self._key[0] != parts:
            self._key = (parts, super().state_key)
        return self._key[1]

    def idle_batch_hooks(self) -> list[str]:
        """Hooks training/idle_hooks.py may hide: batch end, unless saving by steps or by time."""
        by_batch = (self._every_n_train_steps >= 1 or self._train_time_interval is not None
                    or self.last_every_n_steps is not None or self.last_every_n_seconds is not None
                    or self.last_on_signal is not None)
        return [] if by_batch else ["on_train_batch_end"]

    def request_last(self) -> None:
        """Save `last` at the end of the next training step that may save it (signal-safe: sets a flag)."""
        self._last_requested = True

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and self.last_on_signal is not None and threading.current_thread() is threading.main_thread():
            self._handler_before = signal.signal(self.last_on_signal, self._on_signal)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if self._handler_before is not None and self.last_on_signal is not None:
            signal.signal(self.last_on_signal, self._handler_before)
            self._handler_before = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_last()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_saved_at = time.monotonic()  # minutes of training count from here

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._last_due(trainer, batch_idx):
            self._save_last(trainer)

    def _last_due(self, trainer: Any, batch_idx: int) -> bool:
        """Whether this step's end saves `last`: due by steps, by time or by request, at a step that may."""
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking:
            return False
        if batch_idx + 1 >= trainer.num_training_batches or trainer.fit_loop._should_accumulate():
            return False  # the epoch's end (its boundary save follows) or gradients half accumulated
        by_steps = self.last_every_n_steps is not None and trainer.global_step % self.last_every_n_steps == 0
        seconds = self.last_every_n_seconds
        due = by_steps or self._last_requested or (
            seconds is not None and time.monotonic() - self._last_saved_at >= seconds)
        if trainer.world_size > 1 and (seconds is not None or self.last_on_signal is not None):
            due = bool(trainer.strategy.broadcast(due))  # clocks and signals differ by rank; rank 0 decides
        return due

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        checkpoint[_STOP_KEY] = bool(trainer.should_stop)

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # a run that early stopping ended, killed while testing, resumes into its test, not another epoch
        trainer.should_stop = bool(checkpoint.get(_STOP_KEY, False))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if trainer.fit_loop.restarted_mid_epoch:
            # Resumed from a `last` saved inside this epoch: its end is a whole
            # one (every batch trained, validation fresh). Left "restarting",
            # Lightning would skip this epoch's scheduler step.
            trainer.fit_loop.restarting = False

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
        if self._saving_last:
            super()._save_last_checkpoint(trainer, monitor_candidates)

    def _save_last_at_boundary(self, trainer: Any) -> None:
        # Lightning's own skip test also skips a step already saved (by top-k): not a reason here
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking:
            return
        self._save_last(trainer)

    def _save_last(self, trainer: Any) -> None:
        self._last_requested = False
        self._last_saved_at = time.monotonic()
        self._saving_last = True
        try:
            super()._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self._saving_last = False


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
