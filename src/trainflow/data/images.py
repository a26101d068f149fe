"""Encoded images to network inputs: what training, evaluation and serving share.

Images travel as their encoded bytes (PNG/JPEG) from the folder to the
dataset artifact, to the DataLoader worker and to the served model; each of
them decodes with `decode_image` and applies a transform built by
`build_transform`, so a model sees pixels prepared the same way wherever it
runs. Albumentations is imported only when a transform is built (prepare_data
never needs it).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class BadImage(ValueError):
    """Bytes that do not decode to an image; the caller names the file or row."""


def open_image(data: bytes) -> Any:
    """A fully decoded PIL image: `load()` is what catches truncated files, `open()` alone does not."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError as exc:  # its message ends in the buffer's repr (`<_io.BytesIO object at 0x…>`)
        raise BadImage("cannot identify image file") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(str(exc) or type(exc).__name__) from exc
    return image


def decode_image(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB, whatever the file held: grayscale, palette, RGBA, 16-bit.

    Networks take three channels; transparency is composited onto white (the
    usual background of cut-out images) instead of dropped, which would turn
    a transparent background into whatever colour its hidden pixels had.
    EXIF orientation is applied, so a phone photo is upright.
    """
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(open_image(data))
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale PNG: PIL's own conversion would clip everything above 255 to white
        image = Image.fromarray((np.clip(np.asarray(image, dtype=np.float32), 0, 65535) / 257.0).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"))


def image_bytes(value: Any) -> bytes:
    """A cell of an `image` column as bytes: raw bytes, or base64 text (JSON requests)."""
    import base64
    import binascii

    if isinstance(value, bytes | bytearray | memoryview | np.bytes_):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadImage(f"a string that is not base64: {exc}") from exc
    raise BadImage(f"expected PNG/JPEG bytes or base64 text, got {type(value).__name__}")


def build_transform(spec: dict[str, Any] | None) -> Any:
    """An albumentations pipeline from its config (`_target_` nodes, as in configs/data/image_folder.yaml)."""
    from hydra.utils import instantiate

    if not spec:
        raise ValueError("no transform configured (data.train_transform / data.eval_transform)")
    return instantiate(spec, _convert_="all")


def to_tensor(image: np.ndarray) -> Any:
    """HWC array -> CHW float32 tensor; uint8 (a pipeline without Normalize) is scaled to [0, 1]."""
    import torch

    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


def transform_image(transform: Any, data: bytes) -> Any:
    """Encoded bytes -> the network's input tensor."""
    return to_tensor(transform(image=decode_image(data))["image"])


def reseed(transform: Any, seed: int) -> None:
    """Give an albumentations pipeline its own random stream.

    Albumentations 2 keeps its generator inside the Compose, unaffected by
    global seeds; forked DataLoader workers would all inherit one state and
    draw identical augmentations (epoch after epoch, without persistent
    workers). Seeding from torch's per-worker seed makes the stream differ per
    worker and epoch, and repeat under `seed_everything`.
    """
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed % 2**32)
