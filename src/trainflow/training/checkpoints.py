"""Checkpoints by path or MLflow URI."""

from __future__ import annotations

import zipfile
from pathlib import Path

from trainflow.errors import UriError
from trainflow.fetch import single_file


def resolve_checkpoint(uri: str, dst: Path) -> Path:
    """A local `.ckpt` for a path, a folder or any MLflow artifact URI.

    `runs:/<id>/checkpoints/best` is a folder holding `best.ckpt` and its
    metadata.yaml, so folders resolve to their one checkpoint file.
    """
    local = single_file(uri, dst, "ckpt_path", (".ckpt",))
    if not zipfile.is_zipfile(local):
        raise UriError(f"ckpt_path: {uri} is not a torch checkpoint")
    return local
