"""Interrupting a fit at a chosen moment, as a signal from outside would.

Resume has to be exact wherever a SIGTERM lands; a test cannot aim a signal
from another process at "the fifth batch of epoch 3" or "inside a
checkpoint save". This callback, enabled by config only, sends the signal to
its own process at that moment, so the step's real signal handling runs:

    +callbacks.fault='{_target_: trainflow.training.faults.SignalAt, moment: train_batch, epoch: 3, batch: 5}'

`in_finalizer: true` sends it from inside an object's finalizer, where
Python drops the KeyboardInterrupt a handler raises: what happens when the
signal lands while the garbage collector runs weakref callbacks (seen as
"Exception ignored in: ... _MultipleClassMarker._remove_item" from
SQLAlchemy). What stops the fit anyway is training/interrupts.py's
`LostInterrupts`, at the next batch; what stops a sweep or pipeline,
tracking/signals.py's `SignalsSince`.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from lightning.pytorch import Callback

from trainflow.errors import ConfigError

# moment -> what it interrupts
MOMENTS = {
    "sanity_check": "the validation sanity check before the first epoch",
    "train_batch": "a training epoch, after batch `batch`",
    "validation_batch": "a validation, after batch `batch`",
    "checkpoint_save": "a checkpoint being written",
    "train_epoch_end": "the end of a training epoch, after its validation and checkpoint",
    "test_batch": "the test after fit, after batch `batch`",
}


class SignalAt(Callback):
    def __init__(self, moment: str, epoch: int = 0, batch: int = 0, signal_name: str = "SIGTERM",
                 in_finalizer: bool = False) -> None:
        if moment not in MOMENTS:
            raise ConfigError(f"callbacks: SignalAt moment '{moment}' is none of {', '.join(MOMENTS)}")
        self.moment, self.epoch, self.batch = moment, epoch, batch
        self.signum = signal.Signals[signal_name]
        self.in_finalizer = in_finalizer
        self.sent = False

    def _at(self, moment: str, trainer: Any, batch: int | None = None) -> None:
        if self.sent or moment != self.moment:
            return
        if moment not in ("sanity_check", "test_batch") and trainer.current_epoch != self.epoch:
            return
        if batch is not None and batch != self.batch:
            return
        self.sent = True
        if self.in_finalizer:
            SignalWhenCollected(self.signum)  # collected at once: its finalizer sends the signal
        else:
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._at("train_batch", trainer, batch_idx)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._at("sanity_check" if trainer.sanity_checking else "validation_batch", trainer, batch_idx)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self._at("checkpoint_save", trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._at("train_epoch_end", trainer)

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._at("test_batch", trainer, batch_idx)


class SignalWhenCollected:
    """Sends `signum` to this process from its finalizer, where Python drops what the handler raises."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        os.kill(os.getpid(), self.signum)
