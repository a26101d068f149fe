"""Checkpoints by path or MLflow URI."""

from __future__ import annotations

import zipfile
from pathlib import Path

from trainflow.errors import UriError

_MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/", "file:", "s3://", "gs://", "wasbs://", "http")


def resolve_checkpoint(uri: str, dst: Path) -> Path:
    """A local `.ckpt` for a path, a folder or any MLflow artifact URI.

    `runs:/<id>/checkpoints/best` is a folder holding `best.ckpt` and its
    metadata.yaml, so folders resolve to their one checkpoint file.
    """
    if uri.startswith(_MLFLOW_SCHEMES):
        from mlflow.artifacts import download_artifacts

        dst.mkdir(parents=True, exist_ok=True)
        try:
            local = Path(download_artifacts(artifact_uri=uri, dst_path=str(dst)))
        except Exception as exc:
            raise UriError(f"ckpt_path: cannot download {uri}: {str(exc).splitlines()[0]}") from exc
    else:
        local = Path(uri).expanduser()
        if not local.exists():
            raise UriError(f"ckpt_path: no such file or folder: {uri}")
    if local.is_dir():
        found = sorted(local.rglob("*.ckpt"))
        if len(found) != 1:
            raise UriError(f"ckpt_path: {uri} holds {len(found)} .ckpt files; name one")
        local = found[0]
    if not zipfile.is_zipfile(local):
        raise UriError(f"ckpt_path: {uri} is not a torch checkpoint")
    return local
