"""A Lightning logger that writes into the step's run, cheaply.

Lightning's MLFlowLogger opens a second run under `mlflow run` unless given
`run_id`, and sends one HTTP request per `log_metrics` call on the training
thread. This logger is built from the run the step holds, buffers metrics and
sends them in batches from one background thread, together with checkpoint
uploads (copied first: Lightning overwrites `last.ckpt` every epoch).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

# MLflow accepts at most 1000 metrics per log_batch request.
_BATCH = 1000


class RunLogger(Logger):
    def __init__(self, client: MlflowClient, run_id: str, flush_every_s: float = 5.0,
                 log_checkpoints: bool = True) -> None:
        super().__init__()
        self._client = client
        self._run_id = run_id
        self._flush_every_s = flush_every_s
        self._log_checkpoints = log_checkpoints
        self._pending: list[Any] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._uploads: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []
        self._staging = Path(tempfile.mkdtemp(prefix="trainflow-ckpt-"))
        self._uploaded: dict[str, float] = {}
        self.logged_checkpoints: dict[str, str] = {}

    # -- Logger API -----------------------------------------------------
    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self._run_id

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def experiment(self) -> MlflowClient:
        return self._client

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The step contract logs the whole resolved config; Lightning's copy
        of module hparams would only collide with it."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key=k, value=float(v), timestamp=now, step=step or 0)
                 for k, v in metrics.items() if not isinstance(v, str)]
        with self._lock:
            self._pending.extend(batch)
        if time.monotonic() - self._last_flush >= self._flush_every_s:
            self._submit(self._flush_pending)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        if not self._log_checkpoints:
            return
        for alias, path in (("best", checkpoint_callback.best_model_path),
                            ("last", checkpoint_callback.last_model_path)):
            if path and Path(path).is_file():
                mtime = Path(path).stat().st_mtime
                if self._uploaded.get(alias) == mtime:
                    continue
                self._uploaded[alias] = mtime
                self._stage_checkpoint(alias, Path(path), checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush everything; the run's status is the step contract's to set."""
        self.flush()

    # -- our API --------------------------------------------------------
    def flush(self) -> None:
        """Send pending metrics and wait for queued uploads."""
        self._submit(self._flush_pending)
        futures, self._futures = self._futures, []
        errors = []
        for future in futures:
            try:
                future.result()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise RuntimeError(f"{len(errors)} tracking upload(s) failed: {errors[0]}")

    def _submit(self, fn: Callable[[], None]) -> None:
        if self._uploads is None:
            self._uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainflow-tracking")
        self._futures = [f for f in self._futures if not f.done() or f.exception() is not None]
        self._futures.append(self._uploads.submit(fn))

    def _flush_pending(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._last_flush = time.monotonic()
        for start in range(0, len(batch), _BATCH):
            self._client.log_batch(self._run_id, metrics=batch[start : start + _BATCH])

    def _stage_checkpoint(self, alias: str, path: Path, callback: ModelCheckpoint) -> None:
        # A fresh folder per save: the previous upload may still be reading
        # its copy when the next epoch overwrites the checkpoint.
        staged = Path(tempfile.mkdtemp(prefix=f"{alias}-", dir=self._staging))
        target = staged / f"{alias}.ckpt"
        shutil.copy2(path, target)
        score = callback.best_model_score if alias == "best" else callback.current_score
        metadata = {
            "alias": alias,
            "original_filename": path.name,
            "monitor": callback.monitor,
            "mode": callback.mode,
            "score": float(score) if score is not None else None,
            "save_weights_only": callback.save_weights_only,
        }
        (staged / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False))
        artifact_path = f"checkpoints/{alias}"
        self.logged_checkpoints[alias] = artifact_path

        def upload() -> None:
            try:
                self._client.log_artifacts(self._run_id, str(staged), artifact_path)
            finally:
                shutil.rmtree(staged, ignore_errors=True)

        self._submit(upload)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._uploads is not None:
                self._uploads.shutdown(wait=True)
                self._uploads = None
            shutil.rmtree(self._staging, ignore_errors=True)
