"""Decoding: OpenCV's fast path gives PIL's pixels, and every file it cannot take goes through PIL.

Training, evaluation and the served model decode with the same
`decode_image`, so which library decodes a file may never change a pixel:
a model trained on one path and served on the other would see other inputs.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from trainflow.data.images import BadImage, decode_image, decode_with_pil, plain_encoding

RNG = np.random.default_rng(7)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def photo(width: int, height: int) -> Image.Image:
    """Smooth colour (photo-like) with a little noise, so the DCT has real work at every frequency."""
    small = Image.fromarray(RNG.integers(0, 255, (max(1, height // 4), max(1, width // 4), 3), dtype=np.uint8))
    smooth = np.asarray(small.resize((width, height), Image.BILINEAR), dtype=np.int16)
    return Image.fromarray(np.clip(smooth + RNG.integers(-12, 12, smooth.shape), 0, 255).astype(np.uint8))


def with_chunk(png: bytes, kind: bytes, payload: bytes) -> bytes:
    """`png` with one more chunk right after IHDR (8 signature + 25 IHDR bytes)."""
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return png[:33] + chunk + png[33:]


def plain_files() -> dict[str, bytes]:
    files = {}
    for width, height in [(1, 1), (7, 5), (31, 17), (96, 96), (257, 130)]:
        rgb = photo(width, height)
        for mode, image in {"rgb": rgb, "gray": rgb.convert("L")}.items():
            for quality in (40, 95):
                for subsampling in ((0, 1, 2) if mode == "rgb" else (-1,)):
                    files[f"{mode}-{width}x{height}-q{quality}-s{subsampling}.jpg"] = encode(
                        image, "JPEG", quality=quality, subsampling=subsampling)
            files[f"{mode}-{width}x{height}-progressive.jpg"] = encode(image, "JPEG", progressive=True, optimize=True)
            files[f"{mode}-{width}x{height}.png"] = encode(image, "PNG")
        files[f"palette-{width}x{height}.png"] = encode(rgb.convert("P"), "PNG")
    png = files["rgb-96x96.png"]
    files["gamma.png"] = with_chunk(png, b"gAMA", struct.pack(">I", 45455))  # PIL ignores gamma; so must OpenCV
    files["srgb.png"] = with_chunk(png, b"sRGB", b"\x00")
    return files


@pytest.mark.parametrize(("name", "data"), plain_files().items(), ids=list(plain_files()))
def test_opencv_decodes_plain_files_to_the_pixels_pil_gives(name: str, data: bytes) -> None:
    assert plain_encoding(data), name
    fast, reference = decode_image(data), decode_with_pil(data)
    assert fast.dtype == reference.dtype == np.uint8 and fast.shape == reference.shape
    assert np.array_equal(fast, reference), f"{name}: max difference {np.abs(fast.astype(int) - reference).max()}"


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    return encode(photo(40, 20), "JPEG", exif=exif)


def other_files() -> dict[str, bytes]:
    rgba = np.dstack([np.asarray(photo(24, 16)), np.full((16, 24), 0, np.uint8)])
    palette = photo(24, 16).convert("P")
    palette.info["transparency"] = 0
    jpeg = encode(photo(24, 16), "JPEG")
    return {
        "exif-rotated.jpg": rotated_jpeg(),
        "cmyk.jpg": encode(photo(24, 16).convert("CMYK"), "JPEG"),
        "transparent.png": encode(Image.fromarray(rgba), "PNG"),
        "palette-transparency.png": encode(palette, "PNG"),
        "gray-alpha.png": encode(photo(24, 16).convert("LA"), "PNG"),
        "16-bit.png": encode(Image.fromarray(np.full((16, 24), 40000, np.uint16)), "PNG"),
        "bilevel.png": encode(photo(24, 16).convert("1"), "PNG"),
        "trailing-bytes.jpg": jpeg + b"\x00" * 8,
    }


@pytest.mark.parametrize(("name", "data"), other_files().items(), ids=list(other_files()))
def test_files_that_need_more_than_decoding_go_through_pil(name: str, data: bytes) -> None:
    assert not plain_encoding(data), name
    assert np.array_equal(decode_image(data), decode_with_pil(data))


def test_pils_conversions_still_apply_orientation_and_transparency() -> None:
    assert decode_image(rotated_jpeg()).shape == (40, 20, 3)  # stored 40 wide, shown upright 20 wide
    assert (decode_image(other_files()["transparent.png"]) == 255).all()  # fully transparent: white


@pytest.mark.parametrize("cut", [2, 100, -2, -20])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_truncated_file_is_left_to_pil_which_refuses_what_lacks_pixels(fmt: str, cut: int) -> None:
    """OpenCV would decode what arrived and fill the rest; PIL refuses a file cut inside its pixels."""
    data = encode(photo(64, 48), fmt)
    truncated = data[:cut]
    assert not plain_encoding(truncated)
    if cut > 0:
        with pytest.raises(BadImage):
            decode_image(truncated)
    else:  # cut in the last bytes: whatever PIL makes of it (a PNG missing only its end chunk still decodes)
        try:
            expected = decode_with_pil(truncated)
        except BadImage:
            with pytest.raises(BadImage):
                decode_image(truncated)
        else:
            assert np.array_equal(decode_image(truncated), expected)
