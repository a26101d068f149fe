"""Image classification from a folder: class folders -> encoded images in parquet -> augmented batches.

`root/<class>/*.png|jpg|jpeg` (suffixes in any case, nested folders inside
a class allowed) is split by the configured fractions, stratified and seeded;
`root/train/<class>/...` with `val/` and `test/` beside it is taken as split
(a missing `val/` or `test/` is drawn from `train/` by its fraction).

prepare_data stores each image's original bytes, never re-encoded, with its
label and file name: the dataset artifact is self-contained, and train,
evaluate and the served model all decode the same bytes the same way
(`trainflow.data.images`). Augmentations run per item in the DataLoader
workers; validation and test batches only ever see the eval transform.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from trainflow.data.dataset import Manifest, read_manifest, read_split, write_dataset
from trainflow.data.images import (
    IMAGE_SUFFIXES,
    BadImage,
    build_transform,
    image_bytes,
    open_image,
    reseed,
    transform_image,
)
from trainflow.data.split_loaders import SplitDataModule
from trainflow.data.task import FolderRows, ServedModel, ServingSpec, probabilities_frame
from trainflow.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TASK = "image-classification/folder"
SCHEMA = pa.schema([("file", pa.string()), ("image", pa.binary()), ("label", pa.int64())])
# folder names of a split layout; the first that exists is used
SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
BAD_IMAGE_POLICIES = ("raise", "skip")
SKIPPED_LISTED = 100  # skipped file names kept in the manifest; the count is always exact


@dataclass(frozen=True)
class ImageFile:
    path: Path
    name: str  # relative to the data root, with forward slashes: stable across machines
    label: str  # its class folder


def _visible(path: Path, base: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(base).parts)


def scan_classes(folder: Path, root: Path) -> list[ImageFile]:
    """Every image under `folder/<class>/`, sorted, so the same folder always gives the same rows."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{folder}: no class folders (expected {folder}/<class>/*.png|jpg|jpeg)")
    files: list[ImageFile] = []
    for class_dir in classes:
        images = sorted(p for p in class_dir.rglob("*")
                        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and _visible(p, class_dir))
        if not images:
            raise DataError(f"{class_dir}: class folder without .png/.jpg/.jpeg images")
        files += [ImageFile(p, p.relative_to(root).as_posix(), class_dir.name) for p in images]
    return files


def scan_root(root: Path) -> dict[str, list[ImageFile]]:
    """{"train": …, "val": …, "test": …} for a split layout (splits it has), else {"all": …}."""
    if not root.is_dir():
        raise DataError(f"data.root: no such folder: {root}")
    found = {}
    for split, names in SPLIT_DIRS.items():
        folder = next((root / n for n in names if (root / n).is_dir()), None)
        if folder is not None:
            found[split] = folder
    if found and "train" not in found:
        raise DataError(f"data.root: {root} has {', '.join(p.name for p in found.values())}/ but no train/")
    if found:
        return {split: scan_classes(folder, root) for split, folder in found.items()}
    return {"all": scan_classes(root, root)}


def check_fractions(fractions: dict[str, float]) -> None:
    if any(not 0 < f < 1 for f in fractions.values()) or sum(fractions.values()) >= 1:
        keys = " and ".join(f"data.{split}_fraction={f}" for split, f in fractions.items())
        raise ConfigError(f"{keys}: must be fractions in (0, 1) that leave images for training")


def split_by_class(labels: list[str], fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Row indices per split; each class is shuffled with `seed` and cut by the fractions, the rest trains.

    Per class, not sklearn's `train_test_split`: a class of two images still
    splits (sklearn refuses classes smaller than the number of splits), and
    every class keeps at least one training image.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {"train": [], **{split: [] for split in fractions}}
    by_class: dict[str, list[int]] = {}
    for row, label in enumerate(labels):
        by_class.setdefault(label, []).append(row)
    for label in sorted(by_class):
        rows = [by_class[label][j] for j in rng.permutation(len(by_class[label]))]
        start = 0
        for split, fraction in fractions.items():
            n = max(0, min(round(fraction * len(rows)), len(rows) - start - 1))
            out[split] += rows[start:start + n]
            start += n
        out["train"] += rows[start:]
    return {split: sorted(rows) for split, rows in out.items()}


@dataclass
class _Read:
    """Images that decoded, and what did not."""

    files: list[ImageFile]
    data: list[bytes]
    skipped: list[str]
    modes: Counter[str]
    sizes: list[tuple[int, int]]


def read_images(files: list[ImageFile], on_bad_image: str) -> _Read:
    """Read and fully decode every file once: a corrupt image fails here, naming it, not mid-epoch."""
    read = _Read([], [], [], Counter(), [])
    for file in files:
        try:
            data = file.path.read_bytes()
            image = open_image(data)
        except OSError as exc:
            problem = f"unreadable: {exc.strerror or exc}"
        except BadImage as exc:
            problem = f"not a readable PNG/JPEG image ({exc})"
        else:
            read.files.append(file)
            read.data.append(data)
            read.modes[image.mode] += 1
            read.sizes.append(image.size)
            continue
        if on_bad_image == "raise":
            raise DataError(f"{file.path}: {problem}; data.on_bad_image=skip leaves such files out")
        read.skipped.append(file.name)
    return read


class EncodedImages(Dataset):
    """Encoded images decoded and transformed per item, in whichever DataLoader worker asks."""

    def __init__(self, images: list[bytes], labels: list[int], names: list[str], transform: Any) -> None:
        self.images, self.labels, self.names = images, labels, names
        self.transform = transform
        self._seed: int | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        seed = torch.initial_seed()  # per worker and epoch in a worker; fixed in the main process
        if seed != self._seed:
            reseed(self.transform, seed)
            self._seed = seed
        try:
            return transform_image(self.transform, self.images[index]), self.labels[index]
        except BadImage as exc:  # checked by prepare_data; a dataset edited by hand fails its digest first
            raise DataError(f"{self.names[index]}: {exc}") from exc


class ImageFolderDataModule(SplitDataModule):
    """Images in class folders (the task contract: trainflow.data.task.TaskDataModule).

    `build_dataset` packs the folder into a dataset artifact (what prepare_data
    logs), `uri` points the module at one, `model_kwargs` tells the model the
    classes, and `serving_spec` hands the registered model the eval transform.
    Transforms arrive as config (`_target_` nodes) and are built in `setup`,
    so packing images never imports albumentations.
    """

    # what the network sees for an input: evaluate takes these from the trained model
    preprocessing_keys = ("eval_transform", "image_size")
    training_only_keys = ("train_transform",)  # augmentation: packs no differently, never evaluated with

    def __init__(self, root: str | None = None, val_fraction: float = 0.15, test_fraction: float = 0.15,
                 seed: int = 12345, on_bad_image: str = "raise", image_size: int = 224,
                 train_transform: dict[str, Any] | None = None, eval_transform: dict[str, Any] | None = None,
                 batch_size: int = 32, num_workers: int = 0, pin_memory: bool = False,
                 uri: str | None = None) -> None:
        super().__init__(batch_size, num_workers, pin_memory)
        self.save_hyperparameters(logger=False)
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ConfigError(f"data.on_bad_image={on_bad_image!r}: expected one of {', '.join(BAD_IMAGE_POLICIES)}")
        self.root, self.seed, self.on_bad_image = root, seed, on_bad_image
        self.fractions = {"val": val_fraction, "test": test_fraction}
        self.train_transform = train_transform or default_transform(image_size)
        self.eval_transform = eval_transform or default_transform(image_size)
        self.uri = uri
        self.label_names: list[str] = []

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def build_dataset(self, folder: Path) -> Manifest:
        if not self.root:
            raise ConfigError("data.root: not set; point it at a folder of class folders")
        root = Path(self.root).expanduser().resolve()
        scanned = scan_root(root)
        layout = "split_folders" if "train" in scanned else "class_folders"
        classes = sorted({f.label for f in scanned.get("train", scanned.get("all", []))})
        for split, files in scanned.items():
            unknown = sorted({f.label for f in files} - set(classes))
            if unknown:
                raise DataError(f"{root}/{split}: class folder(s) {', '.join(unknown)} not in train/")
        reads = {split: read_images(files, self.on_bad_image) for split, files in scanned.items()}
        splits = self._assign_splits(reads)
        index = {name: i for i, name in enumerate(classes)}
        tables = {split: pa.table({"file": [f.name for f, _ in rows], "image": [d for _, d in rows],
                                   "label": [index[f.label] for f, _ in rows]}, schema=SCHEMA)
                  for split, rows in splits.items()}
        for split, table in tables.items():
            if table.num_rows == 0:
                raise DataError(f"{root}: the {split} split is empty; add images or raise data.{split}_fraction")
        skipped = [name for read in reads.values() for name in read.skipped]
        if skipped:
            log.warning("skipped %d unreadable image(s) under %s (data.on_bad_image=skip): %s", len(skipped), root,
                        ", ".join(skipped[:5]) + (" …" if len(skipped) > 5 else ""))
        sizes = [size for read in reads.values() for size in read.sizes]
        modes: Counter[str] = sum((read.modes for read in reads.values()), Counter())
        return write_dataset(
            folder, tables, task=TASK, source=str(root), label_names=classes,
            extra={"layout": layout, "seed": self.seed, "on_bad_image": self.on_bad_image,
                   "val_fraction": self.fractions["val"], "test_fraction": self.fractions["test"],
                   "skipped_images": len(skipped), "skipped_files": skipped[:SKIPPED_LISTED],
                   "modes": dict(sorted(modes.items())), "min_size": list(map(min, zip(*sizes, strict=True))),
                   "max_size": list(map(max, zip(*sizes, strict=True))),
                   # logged as run metrics by the step that reads the dataset (data modules never import MLflow)
                   "metrics": {"data/skipped_images": len(skipped)}},
        )

    def _assign_splits(self, reads: dict[str, _Read]) -> dict[str, list[tuple[ImageFile, bytes]]]:
        """Given split folders as they are; the fractions cut what is missing from train (or from everything)."""
        source = reads.get("train") or reads["all"]
        missing = {split: f for split, f in self.fractions.items() if split not in reads}
        if missing:
            check_fractions(missing)
        rows = split_by_class([f.label for f in source.files], missing, self.seed)
        paired = list(zip(source.files, source.data, strict=True))
        splits = {split: [paired[i] for i in idx] for split, idx in rows.items()}
        for split in ("val", "test"):
            if split in reads:
                splits[split] = list(zip(reads[split].files, reads[split].data, strict=True))
        return {split: splits[split] for split in ("train", "val", "test")}

    def _manifest(self) -> tuple[Path, Manifest]:
        if not self.uri:
            raise ValueError("ImageFolderDataModule needs `uri`: a dataset folder (train prepares one inline)")
        folder = Path(self.uri)
        manifest = read_manifest(folder)
        if not manifest.task.startswith("image-classification/folder"):
            raise DataError(f"{folder}: not an image-folder dataset (task {manifest.task})")
        return folder, manifest

    def model_kwargs(self) -> dict[str, Any]:
        """The classes, which only the dataset knows; the train step puts them into the model config."""
        _, manifest = self._manifest()
        return {"num_classes": len(manifest.label_names), "label_names": list(manifest.label_names)}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        folder, manifest = self._manifest()
        self.label_names = list(manifest.label_names)
        transforms = {"train": build_transform(self.train_transform), "eval": build_transform(self.eval_transform)}
        for split in manifest.splits:
            table = read_split(folder, split)
            missing = [c for c in ("image", "label") if c not in table.column_names]
            if missing:
                raise DataError(f"{folder}/{split}.parquet: not an image dataset (no column {missing[0]})")
            if table.num_rows == 0:
                raise DataError(f"{folder}/{split}.parquet: the {split} split is empty")
            names = table.column("file").to_pylist() if "file" in table.column_names else [
                f"{split}[{i}]" for i in range(table.num_rows)]
            self.splits[split] = EncodedImages(table.column("image").to_pylist(), table.column("label").to_pylist(),
                                               names, transforms["train" if split == "train" else "eval"])

    def serving_spec(self, rows: int = 3) -> ServingSpec:
        """Image bytes in, decoded with the eval transform (in meta.json); the example is test images."""
        meta = {"label_names": self.label_names, "eval_transform": self.eval_transform, "image_column": "image"}
        example = pd.DataFrame({"image": self.splits["test"].images[:rows]})
        return ServingSpec(ImageClassifier, meta, example)



def default_transform(image_size: int) -> dict[str, Any]:
    """Resize and ImageNet normalisation: what a timm network expects, with no augmentation."""
    return {"_target_": "albumentations.Compose", "transforms": [
        {"_target_": "albumentations.Resize", "height": image_size, "width": image_size},
        {"_target_": "albumentations.Normalize"},
    ]}


class ImageClassifier(ServedModel):
    """A column `image` of encoded PNG/JPEG bytes in (base64 text too: JSON requests); one row per image out.

    Returns `label`, `probability` and `prob_<label>` like every classifier.
    Each image goes through the EVAL transform stored in meta.json (resize,
    normalise) after decoding to RGB the way training did, so a grayscale,
    palette or RGBA file of any size is answered.
    """

    batch_size = 64  # images per forward pass: bounds memory on long requests

    def __init__(self, module: Any, meta: dict[str, Any]) -> None:
        super().__init__(module, meta)
        self.transform = build_transform(meta["eval_transform"])
        self.column = str(meta.get("image_column", "image"))

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        if self.column not in rows.columns:
            raise ValueError(f"input lacks column '{self.column}' (PNG/JPEG bytes, or base64 text, per row)")
        probs = [np.zeros((0, len(self.label_names)), dtype=np.float32)]
        values = list(rows[self.column])
        for start in range(0, len(values), self.batch_size):
            tensors = []
            for row, value in enumerate(values[start:start + self.batch_size], start):
                try:
                    tensors.append(transform_image(self.transform, image_bytes(value)))
                except BadImage as exc:
                    raise ValueError(f"row {row}: not a readable PNG/JPEG image ({exc})") from exc
            with torch.no_grad():
                probs.append(torch.softmax(self.module(torch.stack(tensors)), dim=-1).numpy())
        return probabilities_frame(np.concatenate(probs), self.label_names)

    def read_folder(self, folder: Path, on_bad_image: str) -> FolderRows:
        """Every image under `folder`, decoded once here, so a bad file is named instead of failing a batch."""
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        names, images, skipped = [], [], []
        for path in files:
            name = path.relative_to(folder).as_posix()
            try:
                data = path.read_bytes()
                open_image(data)
            except (OSError, BadImage) as exc:
                if on_bad_image == "raise":
                    raise DataError(f"{path}: not a readable PNG/JPEG image ({exc}); on_bad_image=skip leaves "
                                    "such files out") from exc
                skipped.append(name)
                continue
            names.append(name)
            images.append(data)
        if skipped:
            log.warning("skipped %d unreadable image(s) under %s: %s", len(skipped), folder, ", ".join(skipped[:5]))
        if not images:
            raise DataError(f"input: no readable .png/.jpg/.jpeg images under {folder}")
        return FolderRows(names, pd.DataFrame({self.column: images}), skipped)
