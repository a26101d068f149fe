"""Memory stays flat as a dataset grows: packing and reading at two sizes, measured.

What is measured is what a regression to whole-dataset lists would grow:
Python objects (tracemalloc) plus Arrow's own allocations (a fresh proxy
memory pool made the default for the measurement). Mapped file pages are
not allocations: the OS shares and drops them, which is the point.
"""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from trainflow.data.image_folder import EncodedImages, ImageFolderDataModule
from trainflow.data.mapped import open_split

SHARD_MB = 0.5  # row groups of 64 KB: the bound the writer keeps is well below the test's dataset


def noise_folder(root: Path, images: int) -> int:
    """`images` incompressible 64 px PNGs in 4 classes; their total size in bytes."""
    rng = np.random.default_rng(images)
    total = 0
    for i in range(images):
        folder = root / f"c{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(out, format="PNG")
        (folder / f"{i}.png").write_bytes(out.getvalue())
        total += len(out.getvalue())
    return total


def peak_bytes(work: Callable[[], object]) -> int:
    """Peak Python-object bytes plus peak Arrow-allocated bytes while `work` runs."""
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    tracemalloc.start()
    try:
        work()
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(previous)
    return python_peak + pool.max_memory()


def pack_and_read(tmp_path: Path, images: int) -> tuple[int, int, int]:
    """(bytes of images, peak while packing, peak while reading every item of every split)."""
    root = tmp_path / f"images-{images}"
    size = noise_folder(root, images)
    folder = tmp_path / f"ds-{images}"
    module = ImageFolderDataModule(root=str(root), shard_mb=SHARD_MB, image_size=64)
    packing = peak_bytes(lambda: module.build_dataset(folder))

    def read_all() -> None:
        for split in ("train", "val", "test"):
            dataset = EncodedImages(open_split(folder, split), lambda image: {"image": image})
            for index in range(len(dataset)):
                dataset[index]

    return size, packing, peak_bytes(read_all)


def test_packing_and_reading_memory_does_not_grow_with_the_dataset(tmp_path: Path) -> None:
    pack_and_read(tmp_path / "warm-up", 20)  # first-use costs (imports, caches) land outside the measurement
    small = pack_and_read(tmp_path, 100)
    large = pack_and_read(tmp_path, 400)
    extra = large[0] - small[0]
    assert extra > 3 * 2**20, extra  # the large set holds megabytes more than the small one
    # holding the images in lists would grow by at least `extra`; a fifth leaves room for index data
    assert large[1] - small[1] < extra / 5, f"packing: {small[1]} -> {large[1]} bytes for {extra} more"
    assert large[2] - small[2] < extra / 5, f"reading: {small[2]} -> {large[2]} bytes for {extra} more"
