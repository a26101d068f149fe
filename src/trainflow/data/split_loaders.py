"""The DataLoaders every trainflow data module serves from its prepared splits.

Each data module fills `splits` in `setup` from its dataset folder; how the
three loaders are built from them (shuffle for train only, persistent
workers when there are workers) is the same for digits, images and
treebanks, so it lives here once, with the task contract's defaults
(`trainflow.data.task.TaskDataModule`): no preprocessing keys, no model kwargs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from trainflow.data.resumable_loader import ResumableDataLoader


class SplitDataModule(LightningDataModule):
    """A LightningDataModule whose `splits` ({"train"|"val"|"test": map-style dataset}) feed its loaders."""

    preprocessing_keys: ClassVar[tuple[str, ...]] = ()
    training_only_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, batch_size: int, num_workers: int, pin_memory: bool,
                 collate_fn: Callable[[list[Any]], Any] | None = None) -> None:
        """`collate_fn`: for examples that need padding (token tasks); None stacks tensors."""
        super().__init__()
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.collate_fn = collate_fn
        self.splits: dict[str, Any] = {}

    def model_kwargs(self) -> dict[str, Any]:
        """A task whose model needs nothing from its dataset adds nothing to the model config."""
        return {}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        # Train: a uniform permutation of the whole split each epoch
        # (`EpochShuffle`), resumable mid-epoch. Splits are memory-mapped, so a
        # random row costs a page lookup, not a read of its neighbours: a global
        # shuffle stays cheap at any size, and no randomness is traded for
        # locality (no shuffle buffer).
        return (ResumableDataLoader if shuffle else DataLoader)(
            self.splits[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
