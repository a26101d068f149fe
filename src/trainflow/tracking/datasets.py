"""Datasets by URI: download once into a content-addressed cache, log lineage.

A `runs:/<id>/dataset` artifact does not change once its run has finished, so
the URI -> digest mapping is remembered locally: a second use of the same URI
downloads nothing at all, and a hit is still verified against its digest.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainflow.config.redact import mask_url_passwords
from trainflow.data.dataset import (
    MANIFEST,
    Manifest,
    cached,
    read_manifest,
    staging_dir,
    store_in_cache,
    verify_dataset,
)
from trainflow.errors import DataError, UriError
from trainflow.tracking import tags as tag

_REMOTE = ("runs:/", "models:/", "mlflow-artifacts:/", "s3://", "gs://", "wasbs://", "http://", "https://", "dbfs:/")
_RUN_IN_URI = (re.compile(r"^runs:/([0-9a-f]{32})/"), re.compile(r"/([0-9a-f]{32})/artifacts/"))


@dataclass
class FetchedDataset:
    uri: str
    path: Path
    manifest: Manifest
    bytes_downloaded: int
    upstream_run_id: str | None


# URIs whose target can change (an alias moves, `latest` grows, a stage is
# reassigned): only `models:/NAME/<number>` and `models:/m-<id>` stand still.
_MOVES = re.compile(r"^models:/[^/@]+(@[^/]+|/(?!\d+(/|$))[^/]+)(/|$)")


def is_remote(uri: str) -> bool:
    return uri.startswith(_REMOTE)


def upstream_run_id(uri: str) -> str | None:
    for pattern in _RUN_IN_URI:
        match = pattern.search(uri.rstrip("/") + "/")
        if match:
            return match.group(1)
    return None


def fetch_dataset(uri: str, cache_root: Path) -> FetchedDataset:
    """A verified local copy of the dataset at `uri` (any MLflow URI or a folder)."""
    if not is_remote(uri):
        folder = Path(uri.removeprefix("file://")).expanduser()
        if not folder.is_dir():
            raise UriError(f"data.uri: no such folder: {uri}")
        return FetchedDataset(uri, folder, verify_dataset(folder, uri), 0, None)

    index = cache_root / "uris" / hashlib.sha256(uri.encode()).hexdigest()
    if index.is_file() and not _MOVES.match(uri):
        hit = cached(cache_root, index.read_text().strip())
        if hit is not None:
            return FetchedDataset(uri, hit, verify_dataset(hit, uri), 0, upstream_run_id(uri))

    staging = staging_dir(cache_root)
    try:
        downloaded = _download(uri, staging)
        manifest = verify_dataset(downloaded, uri)
        hit = cached(cache_root, manifest.digest)
        path = hit or store_in_cache(downloaded, cache_root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(manifest.digest)
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return FetchedDataset(uri, path, manifest, size, upstream_run_id(uri))


def _download(uri: str, staging: Path) -> Path:
    from trainflow.fetch import download

    local = download(uri, staging, "data.uri")
    if not (local / MANIFEST).is_file():
        raise DataError(f"data.uri: {uri} is not a trainflow dataset (no {MANIFEST})")
    return local


def prepare_inline(datamodule: Any, cache_root: Path) -> FetchedDataset:
    """What prepare_data would log, built locally: the single-step command still works."""
    staging = staging_dir(cache_root)
    try:
        manifest = datamodule.build_dataset(staging)
        path = store_in_cache(staging, cache_root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return FetchedDataset(f"inline:{manifest.source}", path, read_manifest(path), 0, None)


def log_dataset_input(client: Any, run_id: str, fetched: FetchedDataset, context: str) -> None:
    """Lineage the UI shows: name, digest and source of what the step read.

    The URI is recorded with any URL password masked: a user may read a
    dataset through `mlflow-artifacts://user:password@host/...`. The tags and
    the data module's figures go in one request, not one each.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag, RunTag

    from trainflow.tracking.metrics import metric_entities

    manifest = fetched.manifest
    uri = mask_url_passwords(fetched.uri)
    dataset = Dataset(
        name=manifest.task,
        digest=manifest.digest[:36],
        source_type="trainflow",
        source=json.dumps({"uri": uri, "origin": manifest.source}),
        schema=None,
        profile=json.dumps(manifest.splits),
    )
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])
    tags = {
        tag.DATA_URI: uri,
        tag.DATA_DIGEST: manifest.digest,
        tag.DATA_BYTES_DOWNLOADED: str(fetched.bytes_downloaded),
    }
    if fetched.upstream_run_id:
        tags[tag.UPSTREAM_PREPARE_DATA] = fetched.upstream_run_id
    # figures a data module measured while building the dataset (it cannot log them: no MLflow in data/)
    figures = {str(key): float(value) for key, value in (manifest.extra.get("metrics") or {}).items()}
    client.log_batch(run_id, metrics=metric_entities(figures), tags=[RunTag(key, value) for key, value in tags.items()])


def dataset_for_step(data_cfg: Any, datamodule: Any, run: Any, cache_root: Path, context: str) -> FetchedDataset:
    """The dataset a step reads, always as a URI other steps can read again.

    With `data.uri` it is fetched (and verified); without, it is prepared
    inline and logged under this run's `dataset/`, so evaluate can follow the
    lineage to exactly the splits the model saw.
    """
    uri = data_cfg.get("uri")
    if uri:
        fetched = fetch_dataset(str(uri), cache_root)
    else:
        fetched = prepare_inline(datamodule, cache_root)
        run.client.log_artifacts(run.run_id, str(fetched.path), "dataset")
        fetched.uri = run.artifact_uri("dataset")
    datamodule.uri = str(fetched.path)
    log_dataset_input(run.client, run.run_id, fetched, context)
    return fetched


def lineage_data_uri(client: Any, run_id: str | None) -> str | None:
    """The dataset URI the run that produced a model or checkpoint trained on."""
    if not run_id:
        return None
    return client.get_run(run_id).data.tags.get(tag.DATA_URI)
