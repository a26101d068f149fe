"""The dataset artifact: parquet splits (one file, or shards) plus manifest.json, verified by digest.

prepare_data writes one, train and evaluate read one, whether it came from a
run's artifacts, a registry lineage or a local folder. Rows arrive in batches
and leave as parquet row groups (`DatasetWriter`), so packing holds one row
group per split in memory, never the dataset; each file is hashed while it is
written. A split larger than `shard_bytes` is cut into shards
(`train-00000.parquet`, `train-00001.parquet`, ...), a small one stays
`train.parquet`. The manifest lists every file with its size and sha256 (so a
download can be checked, and retried, shard by shard); the dataset digest is
the sha256 of those (name, sha256) lines, so it covers the split files byte
for byte: a download cut short or a file edited by hand is caught before a
single batch is drawn.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trainflow.errors import DataError
from trainflow.fetch import file_digest

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
SPLITS = ("train", "val", "test")
SHARD_BYTES = 256 * 2**20  # a split file larger than this is cut: a download retries one shard, not the split
ROW_GROUP_BYTES = 8 * 2**20  # rows buffered per split before they are written: what packing (and a reader
# converting a row group) holds in memory
_SHARD = re.compile(r"^(?P<split>[^/]+?)(-(?P<index>\d{5}))?\.parquet$")


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
    # every file of the artifact but the manifest: {"name", "bytes", "sha256", "split" (None: a licence), "rows"}
    files: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def split_files(self, split: str) -> list[str]:
        return [f["name"] for f in self.files if f.get("split") == split]


def split_file(split: str) -> str:
    """The name of a split kept in one file (a small split)."""
    return f"{split}.parquet"


def dataset_digest(entries: list[tuple[str, str]]) -> str:
    """sha256 over the (file name, file sha256) lines of the split files, in name order."""
    digest = hashlib.sha256()
    for name, sha in sorted(entries):
        digest.update(f"{name}\0{sha}\n".encode())
    return digest.hexdigest()


def files_digest(folder: Path, splits: list[str] | tuple[str, ...]) -> str:
    """The dataset digest of the split files now in `folder` (one file or shards per split)."""
    names = [p.name for p in folder.glob("*.parquet") if (m := _SHARD.match(p.name)) and m["split"] in splits]
    return dataset_digest([(name, file_digest(folder / name)) for name in names])


class _HashingFile:
    """A write-only file that hashes and counts what passes through: digests cost no second read."""

    def __init__(self, path: Path) -> None:
        self.path, self.handle = path, path.open("wb")
        self.sha, self.bytes, self.closed = hashlib.sha256(), 0, False

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()
        self.closed = True

    def tell(self) -> int:
        return self.bytes

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class _SplitWriter:
    """One split's rows: buffered up to a row group, written to the current shard, a new shard past the size."""

    def __init__(self, folder: Path, split: str, schema: pa.Schema, shard_bytes: int, row_group_bytes: int) -> None:
        self.folder, self.split, self.schema = folder, split, schema
        self.shard_bytes, self.row_group_bytes = shard_bytes, row_group_bytes
        self.pending: list[pa.RecordBatch] = []
        self.pending_bytes = 0
        self.rows = 0
        self.shards: list[dict[str, Any]] = []
        self.file: _HashingFile | None = None
        self.writer: pq.ParquetWriter | None = None
        self.shard_rows = 0

    def add(self, batch: pa.RecordBatch) -> None:
        self.pending.append(batch)
        self.pending_bytes += batch.nbytes
        self.rows += batch.num_rows
        if self.pending_bytes >= self.row_group_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        if self.writer is None:
            self.open_shard()
        assert self.writer is not None
        table = pa.Table.from_batches(self.pending, self.schema)
        self.writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self.shard_rows += table.num_rows
        self.pending, self.pending_bytes = [], 0
        if self.file is not None and self.file.bytes >= self.shard_bytes:
            self.close_shard()

    def open_shard(self) -> None:
        self.file = _HashingFile(self.folder / f"{self.split}-{len(self.shards):05d}.parquet")
        self.writer = pq.ParquetWriter(self.file, self.schema, compression="zstd")
        self.shard_rows = 0

    def close_shard(self) -> None:
        assert self.writer is not None and self.file is not None
        self.writer.close()
        self.file.close()
        self.shards.append({"name": self.file.path.name, "bytes": self.file.bytes, "sha256": self.file.sha.hexdigest(),
                            "split": self.split, "rows": self.shard_rows})
        self.writer, self.file = None, None

    def close(self) -> list[dict[str, Any]]:
        """The shards' entries; a split that fits in one file is renamed to `<split>.parquet`."""
        self.flush()
        if self.writer is None and not self.shards:  # no rows at all: still a readable (empty) file
            self.open_shard()
        if self.writer is not None:
            self.close_shard()
        if len(self.shards) == 1:
            only = self.shards[0]
            (self.folder / only["name"]).rename(self.folder / split_file(self.split))
            only["name"] = split_file(self.split)
        return self.shards


class DatasetWriter:
    """Rows in, split by split and batch by batch; `close` writes the manifest last (a folder with one is complete).

    Memory is one row group per open split (`row_group_bytes`), whatever
    the size of the dataset.
    """

    def __init__(self, folder: Path, schema: pa.Schema, *, shard_bytes: int = SHARD_BYTES,
                 row_group_bytes: int = ROW_GROUP_BYTES) -> None:
        if shard_bytes < 1 or row_group_bytes < 1:
            raise ValueError("shard_bytes and row_group_bytes must be positive")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.schema = folder, schema
        # shards are cut between row groups: several row groups to a shard keep shards near their size
        self.shard_bytes, self.row_group_bytes = shard_bytes, min(row_group_bytes, max(1, shard_bytes // 8))
        self.splits: dict[str, _SplitWriter] = {}
        self.other_files: list[dict[str, Any]] = []

    def write(self, split: str, rows: dict[str, list[Any]] | pa.Table | pa.RecordBatch) -> None:
        """Append rows (columns as lists, or an Arrow table/batch with this writer's schema) to `split`."""
        if isinstance(rows, dict):
            rows = pa.RecordBatch.from_pydict(rows, schema=self.schema)
        if rows.schema != self.schema:
            raise DataError(f"split '{split}' has schema {rows.schema}, expected {self.schema}")
        writer = self.splits.get(split)
        if writer is None:
            writer = self.splits[split] = _SplitWriter(self.folder, split, self.schema, self.shard_bytes,
                                                       self.row_group_bytes)
        batches = rows.to_batches() if isinstance(rows, pa.Table) else [rows]
        for batch in batches:
            writer.add(batch)

    def rows(self, split: str) -> int:
        """Rows written to `split` so far."""
        writer = self.splits.get(split)
        return writer.rows if writer else 0

    def add_file(self, name: str) -> None:
        """A file already in the folder that travels with the splits (a licence); listed, not in the digest."""
        path = self.folder / name
        self.other_files.append({"name": name, "bytes": path.stat().st_size, "sha256": file_digest(path),
                                 "split": None, "rows": None})

    def close(self, *, task: str, source: str, label_names: list[str] | None = None,
              extra: dict[str, Any] | None = None, splits: tuple[str, ...] | None = None) -> Manifest:
        for split in splits or ():
            if split not in self.splits:
                self.write(split, self.schema.empty_table())
        files = [entry for writer in self.splits.values() for entry in writer.close()]
        manifest = Manifest(
            task=task,
            source=source,
            digest=dataset_digest([(f["name"], f["sha256"]) for f in files]),
            splits={split: writer.rows for split, writer in self.splits.items()},
            schema={f.name: str(f.type) for f in self.schema},
            label_names=list(label_names or []),
            extra=dict(extra or {}),
            files=files + self.other_files,
        )
        (self.folder / MANIFEST).write_text(manifest.to_json())
        return manifest


def write_dataset(folder: Path, tables: dict[str, pa.Table], *, task: str, source: str,
                  label_names: list[str] | None = None, extra: dict[str, Any] | None = None,
                  shard_bytes: int = SHARD_BYTES) -> Manifest:
    """Tables a task already holds (a bundled set), written the way streamed rows are."""
    schema = next(iter(tables.values())).schema
    writer = DatasetWriter(folder, schema, shard_bytes=shard_bytes)
    for split, table in tables.items():
        if table.schema != schema:
            raise DataError(f"{source}: split '{split}' has schema {table.schema}, expected {schema}")
        writer.write(split, table)
    return writer.close(task=task, source=source, label_names=label_names, extra=extra, splits=tuple(tables))


def read_manifest(folder: Path, origin: str | None = None) -> Manifest:
    origin = origin or str(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"{origin}: no {MANIFEST}; not a trainflow dataset (run prepare_data)")
    try:
        raw = json.loads(path.read_text())
        manifest = Manifest(**raw)
    except (json.JSONDecodeError, TypeError) as exc:
        raise DataError(f"{origin}/{MANIFEST}: malformed manifest: {exc}") from exc
    if manifest.format_version != FORMAT_VERSION or not manifest.files:
        raise DataError(f"{origin}/{MANIFEST}: dataset format {manifest.format_version}, this trainflow reads "
                        f"{FORMAT_VERSION}; run prepare_data again")
    return manifest


def split_paths(folder: Path, manifest: Manifest, split: str) -> list[Path]:
    return [folder / name for name in manifest.split_files(split)]


def _missing(folder: Path, manifest: Manifest) -> list[str]:
    return [f["name"] for f in manifest.files if f.get("split") and not (folder / f["name"]).is_file()]


def verify_dataset(folder: Path, origin: str | None = None) -> Manifest:
    """The manifest, once every split file matches its digest; a mismatch names the file(s) that changed."""
    origin = origin or str(folder)
    manifest = read_manifest(folder, origin)
    missing = _missing(folder, manifest)
    if missing:
        raise DataError(f"{origin}: split file(s) missing: {', '.join(missing)}")
    listed = [f for f in manifest.files if f.get("split")]
    actual = {f["name"]: file_digest(folder / f["name"]) for f in listed}
    if dataset_digest(list(actual.items())) != manifest.digest:
        changed = [f["name"] for f in listed if actual[f["name"]] != f["sha256"]]
        raise DataError(f"{origin}: digest mismatch ({', '.join(changed) or 'the split files'}): manifest says "
                        f"{manifest.digest[:12]}…, files hash to {dataset_digest(list(actual.items()))[:12]}…")
    return manifest


def check_sizes(folder: Path, origin: str | None = None) -> Manifest:
    """The manifest, once every split file has the size it lists: the cheap check of a folder already verified.

    A cached dataset was hashed when it was written or downloaded; hashing it
    again at every use would read the whole dataset once more per step. A
    truncated or missing file is still caught here.
    """
    origin = origin or str(folder)
    manifest = read_manifest(folder, origin)
    missing = _missing(folder, manifest)
    if missing:
        raise DataError(f"{origin}: split file(s) missing: {', '.join(missing)}")
    for entry in manifest.files:
        if entry.get("split") and (size := (folder / entry["name"]).stat().st_size) != entry["bytes"]:
            raise DataError(f"{origin}/{entry['name']}: {size} bytes, the manifest lists {entry['bytes']} "
                            "(truncated or changed)")
    return manifest


def read_split(folder: Path, split: str) -> pa.Table:
    """A split as an Arrow table over its memory-mapped files (trainflow.data.mapped)."""
    from trainflow.data.mapped import read_split as mapped_split

    return mapped_split(folder, split)
