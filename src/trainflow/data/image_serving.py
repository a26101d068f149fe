"""The registered image classifier: encoded images in, one row of label and probabilities per image out.

`ImageFolderDataModule.serving_spec` hands this class to the registry with
the eval transform in meta.json; it decodes requests with the same
`trainflow.data.images` functions training used, so a served model sees
pixels prepared exactly as in training.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from trainflow.data.images import IMAGE_SUFFIXES, BadImage, build_transform, image_bytes, open_image, transform_image
from trainflow.data.task import FolderRows, ServedModel, probabilities_frame
from trainflow.errors import DataError


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

    def iter_folder(self, folder: Path, on_bad_image: str, batch_size: int) -> Iterator[FolderRows]:
        """Every image under `folder`, `batch_size` at a time, each decoded once here so a bad file is named."""
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        read = 0
        for start in range(0, len(files), batch_size):
            batch = FolderRows([], pd.DataFrame(), [])
            images = []
            for path in files[start:start + batch_size]:
                name = path.relative_to(folder).as_posix()
                try:
                    data = path.read_bytes()
                    open_image(data)
                except (OSError, BadImage) as exc:
                    if on_bad_image == "raise":
                        raise DataError(f"{path}: not a readable PNG/JPEG image ({exc}); on_bad_image=skip leaves "
                                        "such files out") from exc
                    batch.skipped.append(name)
                    continue
                batch.names.append(name)
                images.append(data)
            batch.rows = pd.DataFrame({self.column: images})
            read += len(images)
            yield batch
        if not read:
            raise DataError(f"input: no readable .png/.jpg/.jpeg images under {folder}")
