"""Data at scale: memory and speed of packing and of the train loader at 1x, 4x and 16x a base size.

    uv run python bench/data_scale.py                      # --base 2500 --scales 1,4,16
    uv run python bench/data_scale.py --base 500 --scales 1,4   # a quick look

For each scale it writes an image folder (10 classes of 96 px JPEGs, unique
smooth-noise pictures, like photos in size) and, each in a fresh process so
each peak is its own:

pack          `ImageFolderDataModule.build_dataset` (what prepare_data runs):
              peak RSS of the process.
ours          `setup` + one epoch of `train_dataloader()` (batch 64, the
              workers given, shuffled), no model: peak RSS of the main process
              (and its anonymous part: mapped dataset pages are file pages the
              OS shares and can drop), peak USS of main + workers summed, and
              images per second over the epoch (the train split; the
              clock starts at the first batch in every variant).
imagefolder   torchvision `ImageFolder` over the same files, same loader
              settings, each file read as bytes and put through the same
              decode + albumentations transform (`trainflow.data.images`): the
              same work, from loose files.
decode_only   the same images' bytes held in a list (read before timing),
              decoded and transformed by a DataLoader with the same workers:
              the ceiling of any storage, a loop that only decodes.

Memory is sampled every 0.2 s from /proc (psutil); USS reads smaps, so the
sampler costs a little CPU in every variant alike.

Speed is compared at the middle scale in interleaved rounds (fresh processes,
order rotated, `--limit` batches each, medians), because the shared machine's
speed drifts by a factor of two within minutes. The last line is
`data_scale_growth_mb <pack growth> <loader growth>` (1x -> largest scale,
main-process peak RSS, MB).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CLASSES = 10
TRANSFORM = {"_target_": "albumentations.Compose", "transforms": [
    {"_target_": "albumentations.Resize", "height": 64, "width": 64},
    {"_target_": "albumentations.HorizontalFlip", "p": 0.5},
    {"_target_": "albumentations.Normalize"}]}


def write_folder(root: Path, images: int, side: int = 96) -> int:
    """`images` unique JPEGs in CLASSES class folders; their total bytes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(images)
    total = 0
    for i in range(images):
        folder = root / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)  # upsampled: smooth, photo-like sizes
        out = io.BytesIO()
        Image.fromarray(small).resize((side, side), Image.BILINEAR).save(out, format="JPEG", quality=85)
        (folder / f"{i:07d}.jpg").write_bytes(out.getvalue())
        total += out.tell()
    return total


class Sampler:
    """Peak RSS / RssAnon of this process and peak USS of it plus its children, sampled in a thread."""

    def __init__(self, interval_s: float = 0.2) -> None:
        import psutil

        self.me = psutil.Process()
        self.interval_s = interval_s
        self.peak = {"rss": 0, "rss_anon": 0, "uss_all": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss_anon(self) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return 0

    def sample(self) -> None:
        import psutil

        self.peak["rss"] = max(self.peak["rss"], self.me.memory_info().rss)
        self.peak["rss_anon"] = max(self.peak["rss_anon"], self._rss_anon())
        uss = 0
        for proc in [self.me, *self.me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                uss += proc.memory_full_info().uss
        self.peak["uss_all"] = max(self.peak["uss_all"], uss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def epoch(loader: Any, limit: int | None = None) -> tuple[int, float]:
    """(images, seconds) of one epoch (or its first `limit` batches) after its first batch: worker
    start-up is the same for every variant, so the clock starts when the first batch arrives."""
    batches = iter(loader)
    next(batches)
    start, images = time.perf_counter(), 0
    for count, (x, _) in enumerate(batches, start=1):
        images += len(x)
        if limit is not None and count >= limit:
            break
    return images, time.perf_counter() - start


def phase(name: str, root: Path, dataset: Path, workers: int, batch: int, limit: int | None) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import torch
    from torch.utils.data import DataLoader

    from trainflow.data.image_folder import ImageFolderDataModule
    from trainflow.data.images import build_transform, transform_image

    torch.manual_seed(0)
    result: dict[str, Any] = {}
    if name == "pack":
        with Sampler() as sampler:
            start = time.perf_counter()
            manifest = ImageFolderDataModule(root=str(root)).build_dataset(dataset)
            result["seconds"] = time.perf_counter() - start
        result["images"] = sum(manifest.splits.values())
        result["parquet_mb"] = sum(f["bytes"] for f in manifest.files) / 2**20
    elif name == "ours":
        dm = ImageFolderDataModule(uri=str(dataset), batch_size=batch, num_workers=workers,
                                   train_transform=TRANSFORM, eval_transform=TRANSFORM)
        with Sampler() as sampler:
            dm.setup("fit")
            result["images"], result["seconds"] = epoch(dm.train_dataloader(), limit)
    else:
        from torchvision.datasets import ImageFolder

        transform = build_transform(TRANSFORM)
        files = ImageFolder(str(root), loader=lambda path: Path(path).read_bytes(),
                            transform=lambda data: transform_image(transform, data))
        if name == "decode_only":
            held = [(Path(path).read_bytes(), label) for path, label in files.samples]

            class Held(torch.utils.data.Dataset):
                def __len__(self) -> int:
                    return len(held)

                def __getitem__(self, i: int) -> tuple[Any, int]:
                    return transform_image(transform, held[i][0]), held[i][1]

            source: Any = Held()
        else:
            source = files
        loader = DataLoader(source, batch_size=batch, shuffle=True, num_workers=workers,
                            persistent_workers=workers > 0)
        with Sampler() as sampler:
            result["images"], result["seconds"] = epoch(loader, limit)
    result.update({key: value / 2**20 for key, value in sampler.peak.items()})
    return result


def run_phase(name: str, root: Path, dataset: Path, workers: int, batch: int,
              limit: int | None = None) -> dict[str, Any]:
    extra = ["--limit", str(limit)] if limit else []
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--root", str(root), "--dataset", str(dataset),
                          "--workers", str(workers), "--batch", str(batch), *extra],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def interleaved(root: Path, dataset: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """img/s of each loader, rounds interleaved (order rotated each round): the machine's drift hits all alike."""
    names = ["ours", "imagefolder", "decode_only"]
    speeds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names[round_ % 3:] + names[:round_ % 3]:
            result = run_phase(name, root, dataset, args.workers, args.batch, args.limit or 60)
            speeds[name].append(result["images"] / result["seconds"])
            print(f"  speed round {round_ + 1} {name}: {speeds[name][-1]:.0f} img/s", flush=True)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=2500, help="images at 1x")
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved speed rounds (at the middle scale)")
    parser.add_argument("--limit", type=int, default=None, help="batches per speed round (default 60)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args.phase, Path(args.root), Path(args.dataset), args.workers, args.batch,
                               args.limit)))
        return
    scales = [int(s) for s in args.scales.split(",")]
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    rows = []
    speeds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="data-scale-") as tmp:
        for scale in scales:
            root, dataset = Path(tmp) / f"images-{scale}", Path(tmp) / f"dataset-{scale}"
            folder_mb = write_folder(root, args.base * scale) / 2**20
            row: dict[str, Any] = {"scale": scale, "images": args.base * scale, "folder_mb": folder_mb}
            for name in ("pack", "ours"):
                row[name] = run_phase(name, root, dataset, args.workers, args.batch)
                print(f"  {scale}x {name}: {json.dumps(row[name])}", flush=True)
            rows.append(row)
            if scale == scales[len(scales) // 2] and args.rounds:
                speeds = interleaved(root, dataset, args)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    print("\n| scale | images | folder MB | pack peak RSS MB (anon) | pack s | loader main peak RSS MB (anon) "
          "| loader main+workers peak USS MB | ours img/s (whole epoch) |")
    print("| --- " * 8 + "|")
    for row in rows:
        print(f"| {row['scale']}x | {row['images']} | {row['folder_mb']:.0f} | {row['pack']['rss']:.0f} "
              f"({row['pack']['rss_anon']:.0f}) | {row['pack']['seconds']:.0f} | {row['ours']['rss']:.0f} "
              f"({row['ours']['rss_anon']:.0f}) | {row['ours']['uss_all']:.0f} "
              f"| {row['ours']['images'] / row['ours']['seconds']:.0f} |")
    if speeds:
        median = {name: statistics.median(values) for name, values in speeds.items()}
        each = ", ".join(f"{name} {median[name]:.0f} ({', '.join(f'{v:.0f}' for v in values)})"
                         for name, values in speeds.items())
        print(f"\nimg/s at {scales[len(scales) // 2]}x, {args.rounds} interleaved rounds of {args.limit or 60} "
              f"batches (median; each round): {each}")
        print(f"ours / ImageFolder {median['ours'] / median['imagefolder']:.2f}, "
              f"ours / decode-only {median['ours'] / median['decode_only']:.2f}")
    first, last = rows[0], rows[-1]
    print(f"data_scale_growth_mb {last['pack']['rss'] - first['pack']['rss']:.0f} "
          f"{last['ours']['rss'] - first['ours']['rss']:.0f}")


if __name__ == "__main__":
    main()
