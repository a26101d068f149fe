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
              OS shares and can drop), peak PSS of main + workers summed, and
              images per second over the epoch (the clock starts at the first
              batch).

Memory is sampled every 0.2 s from /proc (psutil). Main + workers is PSS
(each page shared by n of them counted 1/n in each), not USS: after the fork
every page main had is shared with the workers, so USS would count none of
it anywhere; summed PSS is what the group holds, each page once.

Speed is compared at the middle scale, in one process holding three loaders
over the SAME images (the train split's files), with the same batch size,
workers, shuffle and persistent workers:

ours          `ImageFolderDataModule(...).train_dataloader()`: rows of the
              memory-mapped split, decoded and transformed by
              `trainflow.data.images` (the albumentations pipeline TRANSFORM:
              Resize 64x64, HorizontalFlip, Normalize with ImageNet mean/std).
imagefolder   what a new user writes: torchvision `ImageFolder(root,
              transform=...)` with its default loader (PIL opens each file and
              converts it to RGB) and the torchvision equivalent of TRANSFORM:
              `Compose([Resize((64, 64)), RandomHorizontalFlip(),
              ToTensor(), Normalize(IMAGENET_MEAN, IMAGENET_STD)])`; its
              samples are cut to the train split's files.
decode_only   the floor of any storage: the same files' bytes read into a
              list before timing, then decoded and transformed exactly as
              ours (`trainflow.data.images.transform_image`), no training.

The three take turns (the order rotated each round), one whole epoch each
per turn, after one untimed warm-up epoch each: an epoch that has ended
leaves no prefetched work running into the next loader's turn, and the
machine's drift (it is shared) hits all three alike. The clock of a turn runs
from `iter(loader)` to its last batch. Medians over `--rounds` turns are
printed with the ratios. The last line is `data_scale_growth_mb <pack growth>
<loader growth>` (1x -> largest scale, main-process peak RSS, MB).
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
    """Peak RSS / RssAnon of this process and peak PSS of it plus its children, sampled in a thread."""

    def __init__(self, interval_s: float = 0.2) -> None:
        import psutil

        self.me = psutil.Process()
        self.interval_s = interval_s
        self.peak = {"rss": 0, "rss_anon": 0, "pss_all": 0}
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
        pss = 0
        for proc in [self.me, *self.me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                pss += proc.memory_full_info().pss
        self.peak["pss_all"] = max(self.peak["pss_all"], pss)

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


def epoch(loader: Any) -> tuple[int, float]:
    """(images, seconds) of one whole epoch after its first batch (worker start-up is not the loader's speed)."""
    batches = iter(loader)
    next(batches)
    start, images = time.perf_counter(), 0
    for x, _ in batches:
        images += len(x)
    return images, time.perf_counter() - start


def speed_loaders(root: Path, dataset: Path, workers: int, batch: int) -> dict[str, Any]:
    """The three loaders the docstring describes, over the train split's images."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    from trainflow.data.image_folder import ImageFolderDataModule
    from trainflow.data.images import build_transform, transform_image

    dm = ImageFolderDataModule(uri=str(dataset), batch_size=batch, num_workers=workers,
                               train_transform=TRANSFORM, eval_transform=TRANSFORM)
    dm.setup("fit")
    names = set(dm.splits["train"].rows.table.column("file").to_pylist())
    folder = ImageFolder(str(root), transform=transforms.Compose([
        transforms.Resize((64, 64)), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]))
    folder.samples = folder.imgs = [(path, label) for path, label in folder.samples
                                    if Path(path).relative_to(root).as_posix() in names]
    folder.targets = [label for _, label in folder.samples]
    assert len(folder) == len(names) == len(dm.splits["train"]), "the loaders must read the same images"
    transform = build_transform(TRANSFORM)
    held = [(Path(path).read_bytes(), label) for path, label in folder.samples]

    class Held(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(held)

        def __getitem__(self, i: int) -> tuple[Any, int]:
            return transform_image(transform, held[i][0]), held[i][1]

    same = {"batch_size": batch, "shuffle": True, "num_workers": workers, "persistent_workers": workers > 0}
    return {"ours": dm.train_dataloader(), "imagefolder": DataLoader(folder, **same),
            "decode_only": DataLoader(Held(), **same)}


def cpu_seconds() -> float:
    """User + system CPU time of this process and all its children (every loader's workers) so far."""
    import psutil

    total = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def turn(loader: Any) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds) of one whole epoch, from `iter()` to its last batch.

    CPU seconds count main + workers (idle loaders' workers add ~0): what the
    epoch cost, which other users' load on the machine changes far less than
    the wall time.
    """
    cpu, start, images = cpu_seconds(), time.perf_counter(), 0
    for x, _ in loader:
        images += len(x)
    return images, time.perf_counter() - start, cpu_seconds() - cpu


def speed(root: Path, dataset: Path, workers: int, batch: int, rounds: int) -> dict[str, Any]:
    """img/s (wall) and img per CPU second of each loader per turn: one warm-up epoch each, then `rounds`
    rotations of one epoch each."""
    import torch

    torch.manual_seed(0)
    loaders = speed_loaders(root, dataset, workers, batch)
    for loader in loaders.values():
        turn(loader)
    names = list(loaders)
    speeds: dict[str, Any] = {"wall": {name: [] for name in names}, "cpu": {name: [] for name in names}}
    for round_ in range(rounds):
        for name in names[round_ % 3:] + names[:round_ % 3]:
            images, seconds, cpu = turn(loaders[name])
            speeds["wall"][name].append(images / seconds)
            speeds["cpu"][name].append(images / cpu)
            print(f"  speed round {round_ + 1} {name}: {images / seconds:.0f} img/s, {images / cpu:.0f} img per CPU s",
                  file=sys.stderr, flush=True)
    return speeds


def phase(name: str, root: Path, dataset: Path, workers: int, batch: int) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import torch

    from trainflow.data.image_folder import ImageFolderDataModule

    torch.manual_seed(0)
    result: dict[str, Any] = {}
    if name == "pack":
        with Sampler() as sampler:
            start = time.perf_counter()
            manifest = ImageFolderDataModule(root=str(root)).build_dataset(dataset)
            result["seconds"] = time.perf_counter() - start
        result["images"] = sum(manifest.splits.values())
        result["parquet_mb"] = sum(f["bytes"] for f in manifest.files) / 2**20
    else:
        dm = ImageFolderDataModule(uri=str(dataset), batch_size=batch, num_workers=workers,
                                   train_transform=TRANSFORM, eval_transform=TRANSFORM)
        with Sampler() as sampler:
            dm.setup("fit")
            result["images"], result["seconds"] = epoch(dm.train_dataloader())
    result.update({key: value / 2**20 for key, value in sampler.peak.items()})
    return result


def run_phase(name: str, root: Path, dataset: Path, args: argparse.Namespace) -> Any:
    """`phase` (or `speed`) in a fresh process: its own peak memory, its own imports; its stderr passes through."""
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--root", str(root), "--dataset", str(dataset),
                          "--workers", str(args.workers), "--batch", str(args.batch), "--rounds", str(args.rounds)],
                         stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=2500, help="images at 1x")
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="speed turns per loader (at the middle scale); 0: none")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        root, dataset = Path(args.root), Path(args.dataset)
        result = (speed(root, dataset, args.workers, args.batch, args.rounds) if args.phase == "speed"
                  else phase(args.phase, root, dataset, args.workers, args.batch))
        print(json.dumps(result))
        return
    scales = [int(s) for s in args.scales.split(",")]
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    rows = []
    speeds: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="data-scale-") as tmp:
        for scale in scales:
            root, dataset = Path(tmp) / f"images-{scale}", Path(tmp) / f"dataset-{scale}"
            folder_mb = write_folder(root, args.base * scale) / 2**20
            row: dict[str, Any] = {"scale": scale, "images": args.base * scale, "folder_mb": folder_mb}
            for name in ("pack", "ours"):
                row[name] = run_phase(name, root, dataset, args)
                print(f"  {scale}x {name}: {json.dumps(row[name])}", flush=True)
            rows.append(row)
            if scale == scales[len(scales) // 2] and args.rounds:
                speeds = run_phase("speed", root, dataset, args)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    print("\n| scale | images | folder MB | pack peak RSS MB (anon) | pack s | loader main peak RSS MB (anon) "
          "| loader main+workers peak PSS MB | ours img/s (whole epoch) |")
    print("| --- " * 8 + "|")
    for row in rows:
        print(f"| {row['scale']}x | {row['images']} | {row['folder_mb']:.0f} | {row['pack']['rss']:.0f} "
              f"({row['pack']['rss_anon']:.0f}) | {row['pack']['seconds']:.0f} | {row['ours']['rss']:.0f} "
              f"({row['ours']['rss_anon']:.0f}) | {row['ours']['pss_all']:.0f} "
              f"| {row['ours']['images'] / row['ours']['seconds']:.0f} |")
    if speeds:
        print(f"\nspeed at {scales[len(scales) // 2]}x, {args.workers} workers, batch {args.batch}, "
              f"{args.rounds} interleaved epochs each (median; each epoch):")
        for unit, label in (("wall", "img/s"), ("cpu", "img per CPU second (main + workers)")):
            median = {name: statistics.median(values) for name, values in speeds[unit].items()}
            print(f"{label}: " + ", ".join(f"{name} {median[name]:.0f} ({', '.join(f'{v:.0f}' for v in values)})"
                                           for name, values in speeds[unit].items()))
            print(f"  ours / torchvision ImageFolder {median['ours'] / median['imagefolder']:.2f}, "
                  f"ours / decode-only {median['ours'] / median['decode_only']:.2f}")
    first, last = rows[0], rows[-1]
    print(f"data_scale_growth_mb {last['pack']['rss'] - first['pack']['rss']:.0f} "
          f"{last['ours']['rss'] - first['ours']['rss']:.0f}")


if __name__ == "__main__":
    main()
