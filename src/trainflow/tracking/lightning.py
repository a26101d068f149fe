"""A Lightning logger that writes into the step's run, cheaply and through outages.

Lightning's MLFlowLogger opens a second run under `mlflow run` unless given
`run_id`, and sends one HTTP request per `log_metrics` call on the training
thread. This logger is built from the run the step holds and sends from one
background thread: metrics in batches, checkpoints (copied first, since
Lightning overwrites `last.ckpt` every epoch) as they are saved.

When the tracking server goes away, nothing is dropped: metrics and the newest
checkpoint of each alias wait in memory and go out when it answers again. If
it is still gone when the step ends (after `outage_grace_s`), they are written
to a folder beside the run's outputs, and `python -m trainflow.tracking.sync
FOLDER` uploads them later.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from trainflow.errors import TrackingError, first_line

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

# MLflow accepts at most 1000 metrics per log_batch request.
_BATCH = 1000
_RETRY_S = 2.0


class RunLogger(Logger):
    def __init__(self, client: MlflowClient, run_id: str, flush_every_s: float = 5.0,
                 log_checkpoints: bool = True, outage_grace_s: float = 60.0,
                 spool_dir: Path | None = None) -> None:
        super().__init__()
        self._client = client
        self._run_id = run_id
        self._flush_every_s = flush_every_s
        self._log_checkpoints = log_checkpoints
        self._outage_grace_s = outage_grace_s
        self._spool_dir = spool_dir
        self._pending: list[Any] = []
        self._checkpoints: dict[str, tuple[Path, str]] = {}  # alias -> (staged folder, artifact path)
        self._sending: Path | None = None  # the staged folder being uploaded: a newer save must not delete it
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._worker: threading.Thread | None = None
        self._last_flush = time.monotonic()
        self._staging = Path(tempfile.mkdtemp(prefix="trainflow-ckpt-"))
        self._uploaded: dict[str, float] = {}
        self.outage_s = 0.0
        self._outage_started: float | None = None
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
            self._kick()

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
        self._kick()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Nothing to end: the run's status is the step contract's to set."""

    # -- our API --------------------------------------------------------
    def close(self) -> None:
        """Send everything, waiting out an outage for up to `outage_grace_s`.

        Raises TrackingError (after saving what is left to disk) when the
        server does not come back in time.
        """
        worker, self._worker = self._worker, None
        if worker is not None:
            self._stop = True
            self._wake.set()
            worker.join()
        deadline = time.monotonic() + self._outage_grace_s
        while not self._drain():
            if time.monotonic() >= deadline:
                folder = self._spool()
                raise TrackingError(
                    f"tracking server unreachable for {self._outage_grace_s:g}s at the end of the step: "
                    f"metrics and checkpoints saved in {folder}; upload them with "
                    f"`python -m trainflow.tracking.sync {folder}`")
            time.sleep(_RETRY_S)
        shutil.rmtree(self._staging, ignore_errors=True)

    # -- the background sender -------------------------------------------
    def _kick(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="trainflow-tracking", daemon=True)
            self._worker.start()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(timeout=max(self._flush_every_s, 0.5))
            self._wake.clear()
            if self._stop:
                return
            if not self._drain():
                time.sleep(_RETRY_S)  # the server is away: try again later, keep everything

    def _drain(self) -> bool:
        """Send what is pending; True when nothing is left."""
        self._last_flush = time.monotonic()
        try:
            while True:
                with self._lock:
                    batch = self._pending[:_BATCH]
                if not batch:
                    break
                self._client.log_batch(self._run_id, metrics=batch)
                with self._lock:
                    del self._pending[: len(batch)]
            for alias in list(self._checkpoints):
                with self._lock:
                    staged, artifact_path = self._checkpoints[alias]
                    self._sending = staged
                try:
                    self._client.log_artifacts(self._run_id, str(staged), artifact_path)
                finally:
                    with self._lock:
                        self._sending = None
                with self._lock:
                    superseded = self._checkpoints.get(alias, (None,))[0] != staged
                    if not superseded:
                        del self._checkpoints[alias]
                shutil.rmtree(staged, ignore_errors=True)
        except Exception as exc:
            self._note_outage(exc)
            return False
        if self.outage_s:
            log.info("tracking server is back; buffered metrics and checkpoints sent")
        self._outage_started = None
        return True

    def _note_outage(self, exc: Exception) -> None:
        now = time.monotonic()
        started = self._outage_started
        if started is None:
            self._outage_started = now
            log.warning("tracking server unreachable (%s); buffering metrics and checkpoints",
                        first_line(exc)[:200])
        else:
            self.outage_s = now - started

    def _stage_checkpoint(self, alias: str, path: Path, callback: ModelCheckpoint) -> None:
        # A fresh folder per save: the sender may still be reading the previous
        # copy when the next epoch overwrites the checkpoint.
        staged = Path(tempfile.mkdtemp(prefix=f"{alias}-", dir=self._staging))
        shutil.copy2(path, staged / f"{alias}.ckpt")
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
        with self._lock:
            previous = self._checkpoints.get(alias)
            self._checkpoints[alias] = (staged, artifact_path)
            in_flight = previous is not None and previous[0] == self._sending
        if previous is not None and not in_flight:  # superseded before it could be sent
            shutil.rmtree(previous[0], ignore_errors=True)

    def _spool(self) -> Path:
        """Everything unsent, on disk, with what `trainflow.tracking.sync` needs."""
        folder = self._spool_dir or Path(tempfile.mkdtemp(prefix="trainflow-unsynced-"))
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            metrics, checkpoints = list(self._pending), dict(self._checkpoints)
        with (folder / "metrics.jsonl").open("a") as handle:
            for m in metrics:
                handle.write(json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp,
                                         "step": m.step}) + "\n")
        artifacts = {}
        for alias, (staged, artifact_path) in checkpoints.items():
            target = folder / "checkpoints" / alias
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(staged, target)
            artifacts[str(target.relative_to(folder))] = artifact_path
        manifest = {"run_id": self._run_id, "tracking_uri": str(self._client.tracking_uri),
                    "metrics": "metrics.jsonl", "artifacts": artifacts}
        (folder / "sync.json").write_text(json.dumps(manifest, indent=2))
        return folder
