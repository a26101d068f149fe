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

    The common files (`plain_encoding`: complete 8-bit gray/RGB/palette PNGs
    and JPEGs with no EXIF, transparency or Adobe colour transform) are
    decoded by OpenCV, one C call that is several times cheaper than PIL's
    Python-level header parsing for the small images training reads by the
    thousand. For them both libraries' decoders (libjpeg-turbo, zlib) give the
    same pixels, which tests/test_images.py checks; every other file, and any
    that OpenCV refuses, goes through PIL, which also names what is wrong.
    """
    if plain_encoding(data):
        import cv2

        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
        if pixels is not None:
            return pixels
    return decode_with_pil(data)


def decode_with_pil(data: bytes) -> np.ndarray:
    """`decode_image` for every file: PIL's conversions, whichever the mode."""
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


_PNG = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_FRAMES = (0xC0, 0xC1, 0xC2)  # baseline, extended and progressive Huffman frames


def plain_encoding(data: bytes) -> bool:
    """True for files whose RGB pixels need nothing beyond decoding: no orientation, alpha or colour transform.

    Read from the headers only (a few markers or chunks before the pixel
    data), and only complete files (JPEG's end marker, PNG's IEND last): a
    truncated file goes to PIL, which refuses it.
    """
    from PIL import Image

    if data[:8] == _PNG and data[-12:] == _PNG_END and data[12:16] == b"IHDR":
        pixels = int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
        if data[24] != 8 or data[25] not in (0, 2, 3) or pixels > (Image.MAX_IMAGE_PIXELS or pixels):
            return False  # 16-bit or sub-byte depth, alpha channel, or a size PIL would refuse
        pos = 8
        while pos + 8 <= len(data):
            kind = data[pos + 4:pos + 8]
            if kind == b"IDAT":
                return True
            if kind in (b"tRNS", b"eXIf"):  # transparency (composited onto white), orientation
                return False
            pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
        return False
    if data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        return False
    pos, components = 2, 0
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: every header has been seen
            return components in (1, 3)
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xEE or (marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\x00\x00"):
            return False  # Adobe colour transform (CMYK, YCCK), EXIF (orientation)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            pixels = int.from_bytes(data[pos + 5:pos + 7], "big") * int.from_bytes(data[pos + 7:pos + 9], "big")
            if marker not in _JPEG_FRAMES or data[pos + 4] != 8 or pixels > (Image.MAX_IMAGE_PIXELS or pixels):
                return False  # arithmetic, lossless or 12-bit frames; a size PIL would refuse
            components = data[pos + 9]
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return False


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
