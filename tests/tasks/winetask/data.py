"""scikit-learn's bundled wine recipes as a trainflow task: the data module and its served model.

Features are standardised with the training split's mean and deviation,
which the dataset's manifest records and the served model carries in its
meta.json, so a request holds raw measurements, as a user has them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch.utils.data import TensorDataset

from trainflow.data.dataset import Manifest, read_manifest, read_split, write_dataset
from trainflow.data.split_loaders import SplitDataModule
from trainflow.data.task import ServedModel, ServingSpec, probabilities_frame
from trainflow.errors import DataError

TASK = "tabular-classification/wine"


def load_wine_frame() -> tuple[pd.DataFrame, list[str]]:
    """The 178 recipes (13 measurements and a `label` column) and the cultivar names."""
    from sklearn.datasets import load_wine

    wine = load_wine(as_frame=True)
    frame = wine.frame.rename(columns={"target": "label"})
    return frame, [str(name) for name in wine.target_names]


class WineDataModule(SplitDataModule):
    """Measurements in, cultivar out; seeded, stratified splits."""

    def __init__(self, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 12345,
                 batch_size: int = 32, num_workers: int = 0, pin_memory: bool = False,
                 uri: str | None = None) -> None:
        super().__init__(batch_size, num_workers, pin_memory)
        self.save_hyperparameters(logger=False)
        self.val_fraction, self.test_fraction, self.seed, self.uri = val_fraction, test_fraction, seed, uri
        self.features: list[str] = []
        self.scale: dict[str, list[float]] = {}

    def build_dataset(self, folder: Path) -> Manifest:
        from sklearn.model_selection import train_test_split

        frame, names = load_wine_frame()
        rest, test = train_test_split(frame, test_size=self.test_fraction, stratify=frame.label,
                                      random_state=self.seed)
        share = self.val_fraction / (1 - self.test_fraction)
        train, val = train_test_split(rest, test_size=share, stratify=rest.label, random_state=self.seed)
        features = [c for c in frame.columns if c != "label"]
        scale = {"mean": train[features].mean().tolist(), "std": train[features].std().tolist()}
        tables = {split: pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False)
                  for split, part in (("train", train), ("val", val), ("test", test))}
        return write_dataset(folder, tables, task=TASK, source="sklearn.datasets.load_wine", label_names=names,
                             extra={"features": features, "scale": scale, "seed": self.seed})

    def _manifest(self) -> tuple[Path, Manifest]:
        if not self.uri:
            raise ValueError("WineDataModule needs `uri`: a dataset folder (train prepares one inline)")
        folder = Path(self.uri)
        manifest = read_manifest(folder)
        if manifest.task != TASK:
            raise DataError(f"{folder}: not a wine dataset (task {manifest.task})")
        return folder, manifest

    def model_kwargs(self) -> dict[str, Any]:
        _, manifest = self._manifest()
        return {"num_classes": len(manifest.label_names), "label_names": list(manifest.label_names),
                "net.in_features": len(manifest.extra["features"]), "net.num_classes": len(manifest.label_names)}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        folder, manifest = self._manifest()
        self.label_names = list(manifest.label_names)
        self.features, self.scale = list(manifest.extra["features"]), dict(manifest.extra["scale"])
        for split in manifest.splits:
            frame = read_split(folder, split).to_pandas()
            x = standardised(frame, self.features, self.scale)
            self.splits[split] = TensorDataset(torch.from_numpy(x), torch.from_numpy(frame.label.to_numpy()))

    def serving_spec(self, rows: int = 5) -> ServingSpec:
        folder, _ = self._manifest()
        example = read_split(folder, "test").to_pandas()[self.features].head(rows)
        meta = {"features": self.features, "scale": self.scale, "label_names": self.label_names}
        return ServingSpec(WineRows, meta, example)


def standardised(frame: pd.DataFrame, features: list[str], scale: dict[str, list[float]]) -> np.ndarray:
    x = frame[features].to_numpy(dtype=np.float32)
    return ((x - np.asarray(scale["mean"], np.float32)) / np.asarray(scale["std"], np.float32)).astype(np.float32)


class WineRows(ServedModel):
    """Raw measurements in (one column each); `label`, `probability`, `prob_<cultivar>` out."""

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        features = self.meta["features"]
        missing = [f for f in features if f not in rows.columns]
        if missing:
            raise ValueError(f"input lacks measurement column(s): {', '.join(missing[:5])}")
        x = torch.from_numpy(standardised(rows, features, self.meta["scale"]))
        with torch.no_grad():
            probs = torch.softmax(self.module(x), dim=-1).numpy()
        return probabilities_frame(probs, self.label_names)
