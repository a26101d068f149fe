"""scikit-learn's bundled digits as a LightningDataModule (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch.utils.data import TensorDataset

from trainflow.data.dataset import Manifest, read_manifest, read_split, write_dataset
from trainflow.data.split_loaders import SplitDataModule
from trainflow.data.task import ServedModel, ServingSpec, probabilities_frame
from trainflow.errors import ConfigError, DataError

LABEL_NAMES = [str(d) for d in range(10)]
FEATURES = [f"pixel_{i:02d}" for i in range(64)]
TASK = "image-classification/digits-8x8"


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Features scaled to [0, 1] (pixel values are 0..16) and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float,
                     seed: int) -> dict[str, np.ndarray]:
    """Row indices per split, stratified by label and reproducible from `seed`."""
    from sklearn.model_selection import train_test_split

    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"data.val_fraction={val_fraction} and data.test_fraction={test_fraction} "
            "must be fractions in (0, 1) that leave rows for training"
        )
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest], random_state=seed
    )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def to_table(x: np.ndarray, y: np.ndarray) -> pa.Table:
    columns = {name: pa.array(x[:, i]) for i, name in enumerate(FEATURES)}
    columns["label"] = pa.array(y)
    return pa.table(columns)


def from_table(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([table.column(name).to_numpy() for name in FEATURES], axis=1).astype(np.float32)
    return x, table.column("label").to_numpy().astype(np.int64)


class DigitsDataModule(SplitDataModule):
    """The embedded default task: 8x8 digits, stratified, seeded splits.

    `build_dataset` writes the splits as a dataset folder (what prepare_data
    logs); `uri` points the module at such a folder. The train step always goes
    through a folder, so inline and prepared data share one digest and one
    code path.
    """

    def __init__(self, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 12345,
                 batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False,
                 uri: str | None = None) -> None:
        super().__init__(batch_size, num_workers, pin_memory)
        self.save_hyperparameters(logger=False)
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.uri = uri
        self.label_names = list(LABEL_NAMES)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def build_dataset(self, folder: Path) -> Manifest:
        x, y = load_digits_arrays()
        idx = stratified_split(y, self.val_fraction, self.test_fraction, self.seed)
        tables = {name: to_table(x[rows], y[rows]) for name, rows in idx.items()}
        return write_dataset(
            folder, tables, task=TASK, source="sklearn.datasets.load_digits", label_names=LABEL_NAMES,
            extra={"features": FEATURES, "target": "label", "seed": self.seed,
                   "val_fraction": self.val_fraction, "test_fraction": self.test_fraction},
        )

    def serving_spec(self, rows: int = 5) -> ServingSpec:
        """Feature columns in; the example is test rows."""
        x = self.splits["test"].tensors[0][:rows].numpy()
        meta = {"features": FEATURES, "label_names": self.label_names}
        return ServingSpec(LabelledClassifier, meta, pd.DataFrame(x, columns=FEATURES))

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if not self.uri:
            raise ValueError("DigitsDataModule needs `uri`: a dataset folder (train prepares one inline)")
        folder = Path(self.uri)
        manifest = read_manifest(folder)
        self.label_names = manifest.label_names or self.label_names
        for split in manifest.splits:
            table = read_split(folder, split)
            if table.num_rows == 0:
                raise DataError(f"{folder}/{split}.parquet: the {split} split is empty")
            missing = [c for c in (*FEATURES, "label") if c not in table.column_names]
            if missing:
                raise DataError(f"{folder}/{split}.parquet: not a digits dataset (no column {missing[0]})")
            x, y = from_table(table)
            self.splits[split] = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


class LabelledClassifier(ServedModel):
    """Rows of feature columns in; `label`, `probability`, `prob_<label>` out."""

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        features = self.meta["features"]
        missing = [f for f in features if f not in rows.columns]
        if missing:
            raise ValueError(f"input lacks feature column(s): {', '.join(missing[:5])}")
        x = torch.as_tensor(rows[features].to_numpy(dtype=np.float32, copy=True))
        with torch.no_grad():
            probs = torch.softmax(self.module(x), dim=-1).numpy()
        return probabilities_frame(probs, self.label_names)
