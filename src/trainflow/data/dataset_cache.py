"""The machine's dataset cache: fetch, verify, store and index datasets, one home for all four.

Layout under `<cache_dir>/datasets/`:

- `<digest>/`: a complete dataset (manifest.json + its files), content-addressed,
  moved in by one atomic rename, so a reader never sees half of one;
- `shards/<sha256>`: every split file once, by its own digest; the files of
  `<digest>/` are hard links to these, so two datasets (or two runs' copies
  of one) that share a shard hold it once;
- `uris/<sha256 of the URI>`: the digest a URI that cannot change
  (`runs:/<id>/dataset`) pointed at, so a second use downloads nothing.

A dataset is hashed once when it is written (`DatasetWriter` hashes as it
writes) and once when it is downloaded (each shard as it arrives); a cache
hit only checks file sizes (`check_sizes`). Downloads go shard by shard: the
manifest first, then each file it lists that the cache lacks, each retried
once when it arrives damaged or its transfer breaks off, so a broken
transfer costs one shard (tests/test_dataset_shard_retry.py damages and
cuts transfers through a proxy).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainflow.data.dataset import (
    MANIFEST,
    Manifest,
    check_sizes,
    dataset_digest,
    read_manifest,
    verify_dataset,
)
from trainflow.errors import DataError, UriError
from trainflow.fetch import file_digest, is_artifact_uri

_RUN_IN_URI = (re.compile(r"^runs:/([0-9a-f]{32})/"), re.compile(r"/([0-9a-f]{32})/artifacts/"))
# URIs whose target can change (an alias moves, `latest` grows, a stage is
# reassigned): only `models:/NAME/<number>` and `models:/m-<id>` stand still.
_MOVES = re.compile(r"^models:/[^/@]+(@[^/]+|/(?!\d+(/|$))[^/]+)(/|$)")
SHARD_ATTEMPTS = 2  # a shard that arrives damaged or cut short is downloaded once more before the step fails


@dataclass
class FetchedDataset:
    uri: str
    path: Path
    manifest: Manifest
    bytes_downloaded: int
    upstream_run_id: str | None


def upstream_run_id(uri: str) -> str | None:
    for pattern in _RUN_IN_URI:
        match = pattern.search(uri.rstrip("/") + "/")
        if match:
            return match.group(1)
    return None


def staging_dir(cache_root: Path) -> Path:
    """A temporary folder on the cache's file system, so the final rename is atomic."""
    cache_root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_root))


def cached(cache_root: Path, digest: str) -> Path | None:
    target = cache_root / digest
    return target if (target / MANIFEST).is_file() else None


def _link(source: Path, target: Path) -> None:
    """`target` as a hard link to `source` (one copy on disk); a copy where links are not possible."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def store_in_cache(folder: Path, cache_root: Path, manifest: Manifest) -> Path:
    """Move a dataset whose files match `manifest` to `<cache_root>/<digest>`; its shards join `shards/`.

    The caller has the digests already (written or downloaded, not re-read);
    a second writer of the same content simply finds it there.
    """
    shards = cache_root / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    for entry in manifest.files:
        blob = shards / entry["sha256"]
        if not blob.exists():
            _link(folder / entry["name"], blob)
    target = cache_root / manifest.digest
    if (target / MANIFEST).is_file():
        shutil.rmtree(folder, ignore_errors=True)
        return target
    try:
        os.replace(folder, target)
    except OSError:
        if not (target / MANIFEST).is_file():
            raise
        shutil.rmtree(folder, ignore_errors=True)
    return target


def remember(cache_root: Path, uri: str, digest: str) -> None:
    """Record that `uri` holds the dataset `digest` (prepare_data after its upload, fetch after a download)."""
    if _MOVES.match(uri):
        return
    index = cache_root / "uris" / hashlib.sha256(uri.encode()).hexdigest()
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(digest)


def _recalled(cache_root: Path, uri: str) -> Path | None:
    if _MOVES.match(uri):
        return None
    index = cache_root / "uris" / hashlib.sha256(uri.encode()).hexdigest()
    return cached(cache_root, index.read_text().strip()) if index.is_file() else None


def build_dataset(datamodule: Any, cache_root: Path) -> FetchedDataset:
    """What prepare_data logs, built into the cache: written (and hashed) once, never re-read here."""
    staging = staging_dir(cache_root)
    try:
        manifest = datamodule.build_dataset(staging)
        path = store_in_cache(staging, cache_root, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return FetchedDataset(f"inline:{manifest.source}", path, manifest, 0, None)


def fetch_dataset(uri: str, cache_root: Path) -> FetchedDataset:
    """A verified local copy of the dataset at `uri` (any MLflow URI or a folder)."""
    if not is_artifact_uri(uri):
        folder = Path(uri.removeprefix("file://")).expanduser()
        if not folder.is_dir():
            raise UriError(f"data.uri: no such folder: {uri}")
        return FetchedDataset(uri, folder, verify_dataset(folder, uri), 0, None)
    hit = _recalled(cache_root, uri)
    if hit is not None:
        return FetchedDataset(uri, hit, check_sizes(hit, uri), 0, upstream_run_id(uri))
    staging = staging_dir(cache_root)
    try:
        manifest, downloaded = _download(uri, staging, cache_root)
        path = store_in_cache(staging, cache_root, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    remember(cache_root, uri, manifest.digest)
    return FetchedDataset(uri, path, manifest, downloaded, upstream_run_id(uri))


def _download(uri: str, staging: Path, cache_root: Path) -> tuple[Manifest, int]:
    """The manifest, then each file it lists that `shards/` lacks; (manifest, bytes downloaded)."""
    from trainflow.fetch import download

    base = uri.rstrip("/")
    with tempfile.TemporaryDirectory(dir=cache_root) as tmp:  # a URI without a manifest fails here, naming it
        shutil.copyfile(download(f"{base}/{MANIFEST}", Path(tmp), "data.uri"), staging / MANIFEST)
    manifest = read_manifest(staging, uri)
    shards = cache_root / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    downloaded = 0
    for entry in manifest.files:
        blob = shards / entry["sha256"]
        if not blob.is_file():
            downloaded += _download_shard(f"{base}/{entry['name']}", entry, blob, cache_root)
        _link(blob, staging / entry["name"])
    split_files = [(f["name"], f["sha256"]) for f in manifest.files if f.get("split")]
    if dataset_digest(split_files) != manifest.digest:
        raise DataError(f"data.uri: {uri}/{MANIFEST}: its files do not add up to its digest "
                        f"{manifest.digest[:12]}… (manifest edited by hand?)")
    return manifest, downloaded


def _download_shard(uri: str, entry: dict[str, Any], blob: Path, cache_root: Path) -> int:
    """One file into `shards/`, checked against its size and sha256; damaged or cut twice: one line naming it."""
    from trainflow.fetch import download

    problem = ""
    for _ in range(SHARD_ATTEMPTS):
        with tempfile.TemporaryDirectory(dir=cache_root) as tmp:
            try:
                local = download(uri, Path(tmp), "data.uri", error=DataError)
            except DataError as exc:  # a transfer cut short breaks here, before any check: one more try too
                problem = "cannot download: " + str(exc.__cause__ or exc).strip().splitlines()[0].rstrip(".")
                continue
            size = local.stat().st_size
            if size != entry["bytes"]:
                problem = f"{size} bytes, the manifest lists {entry['bytes']} (truncated)"
                continue
            sha = file_digest(local)
            if sha != entry["sha256"]:
                problem = f"sha256 mismatch: the manifest lists {entry['sha256'][:12]}…, got {sha[:12]}…"
                continue
            os.replace(local, blob)
            return size
    raise DataError(f"data.uri: {uri}: {problem} after {SHARD_ATTEMPTS} downloads")


def dataset_files(folder: Path, manifest: Manifest) -> list[Path]:
    """What a dataset artifact uploads: the files the manifest lists, then the manifest (never `.mapped/`)."""
    return [folder / entry["name"] for entry in manifest.files] + [folder / MANIFEST]
