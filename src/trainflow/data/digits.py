"""scikit-learn's bundled digits as a LightningDataModule (nothing downloaded)."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, TensorDataset

LABEL_NAMES = [str(d) for d in range(10)]


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Features scaled to [0, 1] (pixel values are 0..16) and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float,
                     seed: int) -> dict[str, np.ndarray]:
    """Row indices per split, stratified by label and reproducible from `seed`."""
    from sklearn.model_selection import train_test_split

    if not 0 <= val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} "
            "must be fractions that leave rows for training"
        )
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    if val_fraction == 0:
        return {"train": rest, "val": rest[:0], "test": test}
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest], random_state=seed
    )
    return {"train": train, "val": val, "test": test}


class DigitsDataModule(LightningDataModule):
    """The embedded default task: 8x8 digits, stratified, seeded splits.

    With `uri` set the splits come from a prepared dataset (prepare_data's
    parquet artifact) instead of being drawn here.
    """

    def __init__(self, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 12345,
                 batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False,
                 uri: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.uri = uri
        self.splits: dict[str, TensorDataset] = {}
        self.label_names = list(LABEL_NAMES)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        arrays = self._load_splits()
        self.splits = {
            name: TensorDataset(torch.from_numpy(x), torch.from_numpy(y)) for name, (x, y) in arrays.items()
        }

    def _load_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        if self.uri:
            from trainflow.data.dataset import read_tabular_splits

            splits, label_names = read_tabular_splits(self.uri)
            self.label_names = label_names
            return splits
        x, y = load_digits_arrays()
        idx = stratified_split(y, self.val_fraction, self.test_fraction, self.seed)
        return {name: (x[rows], y[rows]) for name, rows in idx.items()}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
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
