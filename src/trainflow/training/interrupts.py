"""A stop signal whose KeyboardInterrupt Python dropped still stops the fit, at the next batch.

Python runs a signal's handler wherever the main thread is, a finalizer or
a weakref callback included, and drops a KeyboardInterrupt raised there
(tracking/signals.py). Left alone, a Ctrl-C that landed there is ignored and
the fit trains on. Lightning catches a dropped SIGTERM itself while it
trains (its own handler, which calls ours, sets a flag its training loop
reads), but not a Ctrl-C, nor either signal during validation or test. This
callback raises the interrupt at the next batch's end, where Lightning's
graceful shutdown takes it, and the step ends KILLED with 128+signal as if
the handler's interrupt had arrived.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback

from trainflow.tracking.signals import SignalsSince


class LostInterrupts(Callback):
    """`signalled`: the step's mark (StepRun.signalled), so a signal lost before the fit counts too."""

    def __init__(self, signalled: SignalsSince) -> None:
        self.signalled = signalled

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.signalled.raise_if_any()

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self.signalled.raise_if_any()

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self.signalled.raise_if_any()
