"""A rich progress bar that updates by the clock, not on every batch.

Lightning 2.6's RichProgressBar updates its task and rebuilds its metrics text
(a `.item()` per logged value) on every batch, a cost a small model's step
feels (figures: bench/README.md). Its `refresh_rate` is how often its drawing thread redraws per
second, so anything updated between two redraws is never seen. Here a batch
costs one clock read; the task and metrics are updated at most
`refresh_rate` times a second, and at the last batch of every epoch (so a
finished epoch shows its full count). A clock, not a batch count: every 10th
batch is 30 ms on a small model and 10 s on a large one. The epoch's batch
count is read once when the epoch starts, as the bar's own total is: asking
for it per batch walks five trainer properties.

On every rank but zero Lightning disables the bar, and a disabled bar never
learns which evaluation dataloader is current, so asking it for that
loader's total fails: a disabled bar returns before counting anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar


class ThrottledRichProgressBar(RichProgressBar):
    def __init__(self, refresh_rate: int = 2, clock: Callable[[], float] = time.monotonic, **kwargs: Any) -> None:
        """`refresh_rate`: updates (and redraws) per second; 0 disables the bar, as in Lightning."""
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self._clock = clock
        self._interval = 1.0 / max(refresh_rate, 1)
        self._next_update = float("-inf")
        self._train_total: int | float = 0  # until an epoch starts, every batch is its last: always drawn

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._train_total = self.total_train_batches

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.is_disabled and self._due(batch_idx, self._train_total):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if not self.is_disabled and self._due(batch_idx, self.total_val_batches_current_dataloader):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        if not self.is_disabled and self._due(batch_idx, self.total_test_batches_current_dataloader):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def _due(self, batch_idx: int, total: int | float) -> bool:
        """Whether this batch updates the bar: the first one a refresh interval after the last update, or the last."""
        now = self._clock()
        if now < self._next_update and batch_idx + 1 < total:
            return False
        self._next_update = now + self._interval
        return True
