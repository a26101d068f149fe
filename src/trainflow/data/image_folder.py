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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from trainflow.config.redact import mask_url_passwords
from trainflow.data.dataset import SHARD_BYTES, DatasetWriter, Manifest, read_manifest
from trainflow.data.image_serving import ImageClassifier
from trainflow.data.images import (
    IMAGE_SUFFIXES,
    BadImage,
    build_transform,
    open_image,
    reseed,
    transform_image,
)
from trainflow.data.mapped import MappedTable, open_split
from trainflow.data.roots import DataRoot, open_root
from trainflow.data.split_loaders import SplitDataModule
from trainflow.data.task import ServingSpec
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
    name: str  # relative to the data root, with forward slashes: stable across machines and stores
    label: str  # its class folder


def _visible(relative: str) -> bool:
    return not any(part.startswith(".") for part in relative.split("/"))


def _children(folders: set[str], parent: str) -> list[str]:
    """Visible folders directly below `parent` ("" for the root), sorted."""
    depth = parent.count("/") + 1 if parent else 0
    prefix = f"{parent}/" if parent else ""
    return sorted(f for f in folders if f.startswith(prefix) and f.count("/") == depth
                  and not f.rsplit("/", 1)[-1].startswith("."))


def scan_classes(files: list[str], folders: set[str], parent: str, where: str) -> list[ImageFile]:
    """Every image under `parent/<class>/`, sorted, so the same folder always gives the same rows."""
    classes = _children(folders, parent)
    if not classes:
        raise DataError(f"{where}: no class folders (expected {where}/<class>/*.png|jpg|jpeg)")
    found: list[ImageFile] = []
    for class_dir in classes:
        prefix = class_dir + "/"
        images = [ImageFile(f, class_dir.rsplit("/", 1)[-1]) for f in files if f.startswith(prefix)
                  and f.lower().endswith(IMAGE_SUFFIXES) and _visible(f[len(prefix):])]
        if not images:
            raise DataError(f"{where.rstrip('/')}/{class_dir.rsplit('/', 1)[-1]}: class folder without "
                            ".png/.jpg/.jpeg images")
        found += images
    return found


def scan_root(root: DataRoot) -> dict[str, list[ImageFile]]:
    """{"train": …, "val": …, "test": …} for a split layout (splits it has), else {"all": …}; file names only."""
    files, folders = root.entries()
    found = {}
    for split, names in SPLIT_DIRS.items():
        folder = next((n for n in names if n in folders), None)
        if folder is not None:
            found[split] = folder
    if found and "train" not in found:
        raise DataError(f"data.root: {root.uri} has {', '.join(found.values())}/ but no train/")
    if found:
        return {split: scan_classes(files, folders, folder, root.where(folder)) for split, folder in found.items()}
    return {"all": scan_classes(files, folders, "", root.uri)}


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
class PackStats:
    """What packing saw, summed as it streams: files left out, modes, smallest and largest sizes."""

    skipped: list[str] = field(default_factory=list)
    modes: Counter[str] = field(default_factory=Counter)
    min_size: list[int] = field(default_factory=list)
    max_size: list[int] = field(default_factory=list)

    def add(self, mode: str, size: tuple[int, int]) -> None:
        self.modes[mode] += 1
        self.min_size = list(map(min, zip(self.min_size or size, size, strict=True)))
        self.max_size = list(map(max, zip(self.max_size or size, size, strict=True)))


def pack_images(root: DataRoot, files: list[ImageFile], classes: dict[str, int], split: str,
                writer: DatasetWriter, on_bad_image: str, stats: PackStats, batch_rows: int = 256) -> None:
    """Read, fully decode (a corrupt file fails here, named, not mid-epoch) and write `files`, a batch at a time.

    A batch ends at `batch_rows` images or at the writer's row-group size,
    whichever comes first: memory stays bounded for images of any size.
    """
    batch: dict[str, list[Any]] = {"file": [], "image": [], "label": []}
    batch_bytes = 0
    for file in files:
        try:
            data = root.read(file.name)
            image = open_image(data)
        except OSError as exc:
            problem = f"unreadable: {exc.strerror or exc}"
        except BadImage as exc:
            problem = f"not a readable PNG/JPEG image ({exc})"
        else:
            stats.add(image.mode, image.size)
            batch["file"].append(file.name)
            batch["image"].append(data)
            batch["label"].append(classes[file.label])
            batch_bytes += len(data)
            if len(batch["file"]) >= batch_rows or batch_bytes >= writer.row_group_bytes:
                writer.write(split, batch)
                batch, batch_bytes = {"file": [], "image": [], "label": []}, 0
            continue
        if on_bad_image == "raise":
            raise DataError(f"{root.where(file.name)}: {problem}; data.on_bad_image=skip leaves such files out")
        stats.skipped.append(file.name)
    if batch["file"]:
        writer.write(split, batch)


class EncodedImages(Dataset):
    """Encoded images of a mapped split, decoded and transformed per item, in whichever DataLoader worker asks.

    The rows stay in the memory-mapped split (`MappedTable`): a worker copies
    out only the image it is decoding, and every worker shares the pages.
    """

    def __init__(self, rows: MappedTable, transform: Any) -> None:
        self.rows = rows
        self.transform = transform
        self._seed: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def encoded(self, index: int) -> bytes:
        return bytes(self.rows.value("image", index))

    def name(self, index: int) -> str:
        return str(self.rows.value("file", index)) if "file" in self.rows.column_names else f"row {index}"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        seed = torch.initial_seed()  # per worker and epoch in a worker; fixed in the main process
        if seed != self._seed:
            reseed(self.transform, seed)
            self._seed = seed
        try:
            return transform_image(self.transform, self.encoded(index)), int(self.rows.value("label", index))
        except BadImage as exc:  # checked by prepare_data; a dataset edited by hand fails its digest first
            raise DataError(f"{self.name(index)}: {exc}") from exc


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
                 uri: str | None = None, shard_mb: float = SHARD_BYTES / 2**20) -> None:
        super().__init__(batch_size, num_workers, pin_memory)
        self.save_hyperparameters(logger=False)
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ConfigError(f"data.on_bad_image={on_bad_image!r}: expected one of {', '.join(BAD_IMAGE_POLICIES)}")
        if shard_mb <= 0:
            raise ConfigError(f"data.shard_mb={shard_mb}: must be positive")
        self.root, self.seed, self.on_bad_image = root, seed, on_bad_image
        self.shard_bytes = int(shard_mb * 2**20)
        self.fractions = {"val": val_fraction, "test": test_fraction}
        self.train_transform = train_transform or default_transform(image_size)
        self.eval_transform = eval_transform or default_transform(image_size)
        self.uri = uri
        self.label_names: list[str] = []

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def build_dataset(self, folder: Path) -> Manifest:
        """Scan names, assign splits, then read, check and write the images batch by batch (bounded memory)."""
        if not self.root:
            raise ConfigError("data.root: not set; point it at a folder of class folders")
        root = open_root(str(self.root))
        scanned = scan_root(root)
        layout = "split_folders" if "train" in scanned else "class_folders"
        classes = sorted({f.label for f in scanned.get("train", scanned.get("all", []))})
        for split, files in scanned.items():
            unknown = sorted({f.label for f in files} - set(classes))
            if unknown:
                raise DataError(f"{root.where(split)}: class folder(s) {', '.join(unknown)} not in train/")
        index = {name: i for i, name in enumerate(classes)}
        writer = DatasetWriter(folder, SCHEMA, shard_bytes=self.shard_bytes)
        stats = PackStats()
        for split, files in self._assign_splits(scanned).items():
            pack_images(root, files, index, split, writer, self.on_bad_image, stats)
        for split in ("train", "val", "test"):
            if writer.rows(split) == 0:
                raise DataError(f"{root.uri}: the {split} split is empty; add images or raise data.{split}_fraction")
        if stats.skipped:
            log.warning("skipped %d unreadable image(s) under %s (data.on_bad_image=skip): %s", len(stats.skipped),
                        root.uri, ", ".join(stats.skipped[:5]) + (" …" if len(stats.skipped) > 5 else ""))
        return writer.close(
            task=TASK, source=mask_url_passwords(root.uri), label_names=classes,
            extra={"layout": layout, "seed": self.seed, "on_bad_image": self.on_bad_image,
                   "val_fraction": self.fractions["val"], "test_fraction": self.fractions["test"],
                   "skipped_images": len(stats.skipped), "skipped_files": stats.skipped[:SKIPPED_LISTED],
                   "modes": dict(sorted(stats.modes.items())), "min_size": stats.min_size,
                   "max_size": stats.max_size,
                   # logged as run metrics by the step that reads the dataset (data modules never import MLflow)
                   "metrics": {"data/skipped_images": len(stats.skipped)}},
        )

    def _assign_splits(self, scanned: dict[str, list[ImageFile]]) -> dict[str, list[ImageFile]]:
        """Given split folders as they are; the fractions cut what is missing from train (or from everything).

        Splits are drawn from file names, before any file is read: an image
        that turns out unreadable (`on_bad_image=skip`) leaves its split one
        image short instead of shifting every other image's split.
        """
        source = scanned.get("train") or scanned["all"]
        missing = {split: f for split, f in self.fractions.items() if split not in scanned}
        if missing:
            check_fractions(missing)
        rows = split_by_class([f.label for f in source], missing, self.seed)
        splits = {split: [source[i] for i in idx] for split, idx in rows.items()}
        for split in ("val", "test"):
            if split in scanned:
                splits[split] = scanned[split]
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
            rows = open_split(folder, split, manifest)
            missing = [c for c in ("image", "label") if c not in rows.column_names]
            if missing:
                raise DataError(f"{folder}/{split}: not an image dataset (no column {missing[0]})")
            if len(rows) == 0:
                raise DataError(f"{folder}/{split}: the {split} split is empty")
            self.splits[split] = EncodedImages(rows, transforms["train" if split == "train" else "eval"])

    def serving_spec(self, rows: int = 3) -> ServingSpec:
        """Image bytes in, decoded with the eval transform (in meta.json); the example is test images."""
        meta = {"label_names": self.label_names, "eval_transform": self.eval_transform, "image_column": "image"}
        test = self.splits["test"]
        example = pd.DataFrame({"image": [test.encoded(i) for i in range(min(rows, len(test)))]})
        return ServingSpec(ImageClassifier, meta, example)


def default_transform(image_size: int) -> dict[str, Any]:
    """Resize and ImageNet normalisation: what a timm network expects, with no augmentation."""
    return {"_target_": "albumentations.Compose", "transforms": [
        {"_target_": "albumentations.Resize", "height": image_size, "width": image_size},
        {"_target_": "albumentations.Normalize"},
    ]}
