"""Where a task's raw files live: a local folder, `file://` or `s3://bucket/prefix`, read through `pyarrow.fs`.

pyarrow's file systems are already what the dataset files are written with,
so object storage costs no new dependency. Credentials, region and endpoint
come from the environment the way every AWS client reads them
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
`AWS_ENDPOINT_URL`), never from the config: the config is logged as params,
and a key written into `data.root` would be too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainflow.config.redact import mask_url_passwords
from trainflow.errors import DataError, first_line

_REMOTE = ("s3://", "file://", "gs://", "hdfs://")


def is_store_uri(value: str) -> bool:
    """A URI that `open_root` reads through `pyarrow.fs` rather than as a local path."""
    return value.startswith(_REMOTE)


@dataclass
class DataRoot:
    """A folder on some file system; paths below it are relative, with forward slashes."""

    uri: str  # as the user wrote it: what errors name
    fs: Any  # pyarrow.fs.FileSystem
    base: str  # the folder's path on `fs`

    def entries(self) -> tuple[list[str], set[str]]:
        """(every file, every folder) below the root, relative and sorted; one listing call for object stores."""
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.base, recursive=True))
        except FileNotFoundError as exc:
            raise DataError(f"data.root: no such folder: {self.uri}") from exc
        except OSError as exc:
            raise DataError(f"data.root: cannot list {self.uri}: {first_line(exc)}") from exc
        prefix = self.base.rstrip("/") + "/"
        files, folders = [], set()
        for info in infos:
            relative = info.path[len(prefix):] if info.path.startswith(prefix) else info.path
            if info.type == pafs.FileType.Directory:
                folders.add(relative)
            elif info.type == pafs.FileType.File:
                files.append(relative)
        for name in files:  # object stores have no folders, only keys with slashes
            parts = name.split("/")[:-1]
            folders.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        return sorted(files), folders

    def read(self, relative: str) -> bytes:
        with self.fs.open_input_stream(f"{self.base.rstrip('/')}/{relative}") as stream:
            return bytes(stream.read())

    def where(self, relative: str) -> str:
        """A file's name for errors: the path a user can look at."""
        return f"{self.uri.rstrip('/')}/{relative}"


def open_root(uri: str) -> DataRoot:
    """The root named by `data.root`; an unreachable store or a missing folder is one line naming it."""
    import pyarrow.fs as pafs

    if not is_store_uri(uri):
        local = Path(uri).expanduser().resolve()
        if not local.is_dir():
            raise DataError(f"data.root: no such folder: {uri}")
        return DataRoot(str(local), pafs.LocalFileSystem(), str(local))
    try:
        fs, path = pafs.FileSystem.from_uri(uri)  # a store that is down fails at the first listing, named there
    except (OSError, ValueError) as exc:
        raise DataError(f"data.root: cannot open {uri}: {first_line(exc)}") from exc
    return DataRoot(uri, fs, path)


def store_listing(uri: str, key: str) -> list[tuple[str, int, int]] | None:
    """(name, bytes, mtime in ns) of the object `uri` names, or of every object below it; None if nothing is there.

    One listing, no object read: what a cache key needs to notice an object
    added, removed or rewritten (an object store sets a new modification time
    on every write; S3's is to the second, and pyarrow lists no ETag, so only a
    same-size rewrite within the second of the last write goes unseen). Names
    are relative to `uri` (or the object's own name), so neither the bucket's
    endpoint nor credentials in a URI enter a key.
    `key` is the config key that named `uri`, for the error line.
    """
    import pyarrow.fs as pafs

    try:
        fs, base = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.File:
            return [(base.rsplit("/", 1)[-1], int(info.size), int(info.mtime_ns or 0))]
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except (OSError, ValueError) as exc:
        raise DataError(f"{key}: cannot list {mask_url_passwords(uri)}: {first_line(exc)}") from exc
    prefix = base.rstrip("/") + "/"
    listing = sorted((i.path.removeprefix(prefix), int(i.size), int(i.mtime_ns or 0))
                     for i in infos if i.type == pafs.FileType.File)
    return listing or None
