"""The dataset artifact: parquet splits plus manifest.json, verified by digest.

prepare_data writes one, train and evaluate read one, whether it came from a
run's artifacts, a registry lineage or a local folder. The digest covers the
split files byte for byte, so a download that was cut short or a file edited
by hand is caught before a single batch is drawn.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trainflow.errors import DataError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass
class Manifest:
    task: str
    source: str
    digest: str
    splits: dict[str, int]
    schema: dict[str, str]
    label_names: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def split_file(split: str) -> str:
    return f"{split}.parquet"


def files_digest(folder: Path, splits: list[str] | tuple[str, ...]) -> str:
    """sha256 over (name, bytes) of each split file, in split order."""
    digest = hashlib.sha256()
    for split in sorted(splits):
        path = folder / split_file(split)
        digest.update(split.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def write_dataset(folder: Path, tables: dict[str, pa.Table], *, task: str, source: str,
                  label_names: list[str] | None = None, extra: dict[str, Any] | None = None) -> Manifest:
    """Write the splits, then the manifest last: a folder with a manifest is complete."""
    folder.mkdir(parents=True, exist_ok=True)
    schema = next(iter(tables.values())).schema
    for split, table in tables.items():
        if table.schema != schema:
            raise DataError(f"{source}: split '{split}' has schema {table.schema}, expected {schema}")
        pq.write_table(table, folder / split_file(split), compression="zstd")
    manifest = Manifest(
        task=task,
        source=source,
        digest=files_digest(folder, list(tables)),
        splits={split: table.num_rows for split, table in tables.items()},
        schema={f.name: str(f.type) for f in schema},
        label_names=list(label_names or []),
        extra=dict(extra or {}),
    )
    (folder / MANIFEST).write_text(manifest.to_json())
    return manifest


def read_manifest(folder: Path, origin: str | None = None) -> Manifest:
    origin = origin or str(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"{origin}: no {MANIFEST}; not a trainflow dataset (run prepare_data)")
    try:
        raw = json.loads(path.read_text())
        return Manifest(**raw)
    except (json.JSONDecodeError, TypeError) as exc:
        raise DataError(f"{origin}/{MANIFEST}: malformed manifest: {exc}") from exc


def verify_dataset(folder: Path, origin: str | None = None) -> Manifest:
    """The manifest, once every split file matches its digest."""
    origin = origin or str(folder)
    manifest = read_manifest(folder, origin)
    missing = [s for s in manifest.splits if not (folder / split_file(s)).is_file()]
    if missing:
        raise DataError(f"{origin}: split file(s) missing: {', '.join(split_file(s) for s in missing)}")
    actual = files_digest(folder, list(manifest.splits))
    if actual != manifest.digest:
        raise DataError(f"{origin}: digest mismatch: manifest says {manifest.digest[:12]}…, files hash to "
                        f"{actual[:12]}…")
    return manifest


def read_split(folder: Path, split: str) -> pa.Table:
    path = folder / split_file(split)
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: unreadable parquet: {exc}") from exc


def store_in_cache(folder: Path, cache_root: Path) -> Path:
    """Move a verified dataset to `<cache_root>/<digest>` (content-addressed).

    The rename is atomic, so a reader never sees half a dataset, and a second
    writer of the same content simply finds it there.
    """
    manifest = verify_dataset(folder)
    target = cache_root / manifest.digest
    if (target / MANIFEST).is_file():
        shutil.rmtree(folder, ignore_errors=True)
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(folder, target)
    except OSError:
        if not (target / MANIFEST).is_file():
            raise
        shutil.rmtree(folder, ignore_errors=True)
    return target


def cached(cache_root: Path, digest: str) -> Path | None:
    target = cache_root / digest
    return target if (target / MANIFEST).is_file() else None


def staging_dir(cache_root: Path) -> Path:
    """A temporary folder on the cache's file system, so the final rename is atomic."""
    cache_root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_root))
