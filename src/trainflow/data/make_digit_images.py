"""An image-folder data set from scikit-learn's bundled digits: nothing is downloaded.

    uv run python -m trainflow.data.make_digit_images data/digits_images            # 1797 PNGs, 32x32
    uv run python -m trainflow.data.make_digit_images OUT --size 16 --per-class 10   # a tiny one for tests

Writes `OUT/<digit>/<index>.png`: the 8x8, 17-level images scaled to 0..255
and upscaled (bicubic) to `size`, grayscale. The folder is what
`data=image_folder data.root=OUT` (and `experiment=digits_images`) reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def write_digit_images(out: Path, size: int = 32, per_class: int | None = None) -> dict[str, int]:
    """Images written per class; `per_class` keeps the first N of each digit (tests)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    if size < 8:
        raise ValueError(f"--size {size}: must be at least 8 (the source images are 8x8)")
    digits = load_digits()
    counts: dict[str, int] = {}
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        label = str(int(target))
        if per_class is not None and counts.get(label, 0) >= per_class:
            continue
        image = Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8))  # 2-D uint8: grayscale (L)
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        image.resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{index:04d}.png")
        counts[label] = counts.get(label, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write <digit>/<index>.png into")
    parser.add_argument("--size", type=int, default=32, help="side in pixels (default 32)")
    parser.add_argument("--per-class", type=int, default=None, help="at most N images per digit (default: all)")
    args = parser.parse_args(argv)
    counts = write_digit_images(args.out, args.size, args.per_class)
    print(f"wrote {sum(counts.values())} images in {len(counts)} class folders under {args.out}")


if __name__ == "__main__":
    main()
