"""Checkpoints by path or MLflow URI."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from trainflow.config.redact import redact
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


class RedactedHyperparameters(Callback):
    """Checkpoints carry hyperparameters redacted like the run's params.

    Lightning writes the module's and the data module's init arguments into
    every checkpoint (`data.uri` with a URL password among them), and
    checkpoints are logged artifacts. The saved values are redacted in place
    before fit or test starts, so every save has them, weights-only saves
    too (those skip the callbacks' `on_save_checkpoint`). The modules read
    their arguments as attributes, never back from `hparams`.
    """

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        for owner in (pl_module, getattr(trainer, "datamodule", None)):
            hparams = getattr(owner, "hparams", None)
            if hparams:
                hparams.update(redact(dict(hparams)))
