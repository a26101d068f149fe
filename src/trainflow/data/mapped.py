"""Splits read in place: memory-mapped Arrow that DataLoader workers share, never copied into Python lists.

Parquet is what the artifact stores (compressed, the format every tool
reads), but a parquet row is only reachable by decoding its whole row group.
So the first reader of a split file writes its uncompressed Arrow IPC twin
beside it (`.mapped/`, row group by row group: bounded memory), and every
reader after that memory-maps the twin: a row is an offset into the page
cache, the OS shares those pages between the main process and every worker,
and a process holds only the rows it is using. This is what Hugging Face
`datasets` does with its Arrow cache files.

The twin costs disk (the split once more, uncompressed) and one pass over the
parquet the first time; the artifact, its digest and its upload never include
it (uploads list the manifest's files).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from bisect import bisect_right
from itertools import accumulate
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trainflow.data.dataset import Manifest, read_manifest, split_paths
from trainflow.errors import DataError, first_line

MAPPED_DIR = ".mapped"


def _twin_folder(parquet: Path) -> Path:
    """`.mapped/` beside the parquet file; a temporary folder where the dataset's folder is read-only."""
    folder = parquet.parent / MAPPED_DIR
    try:
        folder.mkdir(exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    key = hashlib.sha256(str(parquet.resolve().parent).encode()).hexdigest()[:16]
    fallback = Path(tempfile.gettempdir()) / "trainflow-mapped" / key
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def arrow_twin(parquet: Path) -> Path:
    """The Arrow IPC file holding `parquet`'s rows uncompressed, written once.

    Its name carries the parquet file's size and mtime, so a file replaced in
    place (a copy edited by hand) never reuses a stale twin. The twin is
    written under a temporary name and renamed: two processes (DDP ranks) may
    both write it, and neither ever maps half a file.
    """
    try:
        stat = parquet.stat()
    except OSError as exc:
        raise DataError(f"{parquet}: cannot read: {exc.strerror or exc}") from exc
    folder = _twin_folder(parquet)
    target = folder / f"{parquet.stem}-{stat.st_size}-{stat.st_mtime_ns}.arrow"
    if target.is_file():
        return target
    partial = folder / f".{target.name}.{os.getpid()}.partial"
    try:
        source = pq.ParquetFile(parquet)
        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, source.schema_arrow) as writer:
            for group in range(source.num_row_groups):
                writer.write_table(source.read_row_group(group))
    except (pa.ArrowException, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise DataError(f"{parquet}: unreadable parquet: {first_line(exc)}") from exc
    for stale in folder.glob(f"{parquet.stem}-*.arrow"):
        stale.unlink(missing_ok=True)
    os.replace(partial, target)
    return target


class MappedTable:
    """A split's files as one memory-mapped table, with row access that copies only the row asked for.

    Pickles as its file paths: a worker started by `spawn` maps the files
    again instead of receiving a copy of the rows; a forked worker inherits
    the mapping itself.
    """

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        self._table: pa.Table | None = None
        self._columns: dict[str, list[pa.Array]] = {}
        self._starts: list[int] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["paths"])  # type: ignore[misc]

    @property
    def table(self) -> pa.Table:
        if self._table is None:
            tables = [pa.ipc.open_file(pa.memory_map(str(arrow_twin(path)))).read_all() for path in self.paths]
            table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]  # zero-copy: chunks are kept
            first = table.column(0).chunks if table.num_columns else []
            self._starts = list(accumulate((len(chunk) for chunk in first), initial=0))
            self._table = table
        return self._table

    def __len__(self) -> int:
        return int(self.table.num_rows)

    @property
    def column_names(self) -> list[str]:
        return list(self.table.column_names)

    def value(self, column: str, index: int) -> Any:
        """Row `index` of `column` as a Python value (one image's bytes, one sentence's words)."""
        table = self.table
        if not 0 <= index < table.num_rows:
            raise IndexError(f"row {index} of {table.num_rows}")
        chunks = self._columns.get(column)
        if chunks is None:
            chunks = self._columns[column] = table.column(column).chunks
        chunk = bisect_right(self._starts, index) - 1
        return chunks[chunk][index - self._starts[chunk]].as_py()


def open_split(folder: Path, split: str, manifest: Manifest | None = None) -> MappedTable:
    """The split's rows, mapped, not read; a file that is not parquet fails here, naming it."""
    manifest = manifest or read_manifest(folder)
    mapped = MappedTable(split_paths(folder, manifest, split))
    mapped.table  # noqa: B018 - convert and map now, so a bad file fails in setup, not in a worker
    return mapped


def read_split(folder: Path, split: str) -> pa.Table:
    """A split as an Arrow table whose buffers are the mapped files (nothing is read until it is used)."""
    return open_split(folder, split).table
