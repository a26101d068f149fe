"""A dataset as a run's input: lineage the MLflow UI shows, and the upload of one prepared inline.

Fetching, verifying, caching and indexing datasets is `trainflow.data.dataset_cache`'s;
this module only records what a step read (and where it came from) on its run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainflow.config.redact import mask_url_passwords
from trainflow.data.dataset_cache import (
    FetchedDataset,
    build_dataset,
    dataset_files,
    fetch_dataset,
    remember,
)
from trainflow.tracking import tags as tag
from trainflow.tracking.metrics import metric_entities


def upload_dataset(run: Any, fetched: FetchedDataset, artifact_path: str, cache_root: Path) -> str:
    """Log the dataset's files under `artifact_path`; its URI is remembered, so a later fetch downloads nothing."""
    for path in dataset_files(fetched.path, fetched.manifest):
        run.client.log_artifact(run.run_id, str(path), artifact_path)
    uri = str(run.artifact_uri(artifact_path))
    remember(cache_root, uri, fetched.manifest.digest)
    return uri


def log_dataset_input(client: Any, run_id: str, fetched: FetchedDataset, context: str) -> None:
    """Lineage the UI shows: name, digest and source of what the step read.

    The URI is recorded with any URL password masked: a user may read a
    dataset through `mlflow-artifacts://user:password@host/...`. The tags and
    the data module's figures go in one request, not one each.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag, RunTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

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
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])])
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
        fetched = build_dataset(datamodule, cache_root)
        fetched.uri = upload_dataset(run, fetched, "dataset", cache_root)
    datamodule.uri = str(fetched.path)
    log_dataset_input(run.client, run.run_id, fetched, context)
    return fetched


def lineage_data_uri(client: Any, run_id: str | None) -> str | None:
    """The dataset URI the run that produced a model or checkpoint trained on."""
    if not run_id:
        return None
    return client.get_run(run_id).data.tags.get(tag.DATA_URI)
