"""Files named by a local path or an MLflow artifact URI, fetched to a local path.

Checkpoints, pretrained weights, treebanks and datasets all accept either.
This sits below every other package (not in `tracking`) because data and
model modules need it and must not depend on the tracking layer; it only
reads artifacts, never a run. MLflow is imported only when a URI has to be
downloaded, so data and model modules stay free of it at import time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from trainflow.errors import TrainflowError, UriError, first_line

# What only download_artifacts can reach: tracking URIs, artifact stores, plain URLs. A `file://`
# URI is a local path and is read where it is, not copied.
ARTIFACT_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/", "dbfs:/", "s3://", "gs://", "wasbs://",
                    "http://", "https://")


def is_artifact_uri(uri: str) -> bool:
    return uri.startswith(ARTIFACT_SCHEMES)


def local_path(uri: str, dst: Path, key: str) -> Path:
    """What `uri` names, on this machine: an artifact URI downloaded under `dst`, a path (or `file://`) checked."""
    if is_artifact_uri(uri):
        return download(uri, dst, key)
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.exists():
        raise UriError(f"{key}: no such file or folder: {uri}")
    return path


def download(uri: str, dst: Path, key: str, error: type[TrainflowError] = UriError) -> Path:
    """`uri` downloaded under `dst`; a failure names the config key and the URI in one line."""
    from mlflow.artifacts import download_artifacts

    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except Exception as exc:
        raise error(f"{key}: cannot download {uri}: {first_line(exc)}") from exc


def single_file(uri: str, dst: Path, key: str, suffixes: tuple[str, ...]) -> Path:
    """The one file with one of `suffixes` that a path, a folder or a URI names.

    `runs:/<id>/checkpoints/best` is a folder holding `best.ckpt` beside its
    metadata.yaml, so a folder with exactly one such file stands for it.
    """
    local = local_path(uri, dst, key)
    if local.is_dir():
        found = sorted(p for p in local.rglob("*") if p.suffix.lower() in suffixes)
        if len(found) != 1:
            raise UriError(f"{key}: {uri} holds {len(found)} files ending in {', '.join(suffixes)}; name one")
        local = found[0]
    return local


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
