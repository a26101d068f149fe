"""The predict step: a model's answers for a folder of raw files or a parquet file, as run artifacts.

The model is loaded as the MLflow pyfunc it was logged as, so predict does
exactly what serving does and works for any trainflow model. A parquet file
gives the model's input columns; a folder is read by the task's served model
(`ServedModel.read_folder`: images for an image classifier), so this step
knows no task. Rows are named by file (a folder) or numbered (a parquet
file); the model's columns follow (`label`, `probability`, `prob_<label>`
for classifiers).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from omegaconf import DictConfig

from trainflow.errors import ConfigError, DataError, first_line
from trainflow.fetch import local_path
from trainflow.registry.versions import resolve_model
from trainflow.tracking import tags as tag
from trainflow.tracking.run import StepRun

log = logging.getLogger(__name__)

ARTIFACT_DIR = "predictions"
BAD_IMAGE_POLICIES = ("raise", "skip")  # what a served model's read_folder does with an unreadable file


@dataclass
class PredictResult:
    predictions: pd.DataFrame
    csv: Path
    parquet: Path
    uri: str  # the parquet file as an artifact of the run
    skipped: list[str]


def predict(cfg: DictConfig, run: StepRun) -> PredictResult:
    import mlflow.pyfunc

    if not cfg.get("model_uri"):
        raise ConfigError("model_uri: required (models:/NAME@champion, models:/NAME/N, runs:/<id>/model)")
    if not cfg.get("input"):
        raise ConfigError("input: required (a folder of images or a .parquet file, local or an MLflow URI)")
    if cfg.on_bad_image not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"on_bad_image={cfg.on_bad_image!r}: expected one of {', '.join(BAD_IMAGE_POLICIES)}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size}: must be at least 1")

    model = resolve_model(cfg.model_uri, run.client, run.output_dir / "model")
    tags = {tag.PREDICTED: cfg.model_uri}
    if model.run_id:
        tags[tag.UPSTREAM_TRAIN] = model.run_id
    run.set_tags(tags)
    pyfunc = mlflow.pyfunc.load_model(str(model.local_dir))
    local = local_input(str(cfg.input), run.output_dir / "input")
    skipped: list[str] = []
    batches = (read_folder(local, pyfunc, cfg, skipped) if local.is_dir()
               else read_parquet(local, str(cfg.input), pyfunc, cfg.batch_size))
    with run.timed("predict"):  # reading included: input is read a batch at a time, as the model answers
        answers = [pd.concat([ids.reset_index(drop=True), _as_frame(pyfunc.predict(frame.reset_index(drop=True)))],
                             axis=1) for ids, frame in batches]
    if skipped:
        log.warning("skipped %d unreadable image(s) under %s: %s", len(skipped), local, ", ".join(skipped[:5]))
    predictions = pd.concat(answers, ignore_index=True)
    folder = run.output_dir / ARTIFACT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    parquet, csv = folder / "predictions.parquet", folder / "predictions.csv"
    predictions.to_parquet(parquet, index=False)
    predictions.to_csv(csv, index=False)
    run.client.log_artifacts(run.run_id, str(folder), ARTIFACT_DIR)
    run.log_metrics({"predict/rows": len(predictions), "predict/skipped_images": len(skipped)})
    uri = run.artifact_uri(f"{ARTIFACT_DIR}/predictions.parquet")
    run.set_output(uri)
    print(f"predictions: {csv}", flush=True)
    return PredictResult(predictions, csv, parquet, uri, skipped)


def local_input(uri: str, dst: Path) -> Path:
    """The input as a local path: MLflow artifact URIs are downloaded, paths checked."""
    path = local_path(uri, dst, "input")
    if path.is_file() and path.suffix.lower() != ".parquet":
        raise DataError(f"input: {uri} is neither a folder of images nor a .parquet file")
    return path


def read_folder(folder: Path, pyfunc: Any, cfg: DictConfig,
                skipped: list[str]) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """(file names, the model's input rows) a batch at a time, read the way the model's task reads a folder.

    Files left out (`on_bad_image=skip`) are added to `skipped` as they are met.
    """
    served = getattr(pyfunc.unwrap_python_model(), "served", None)
    if served is not None and hasattr(served, "iter_folder"):
        batches = served.iter_folder(folder, cfg.on_bad_image, cfg.batch_size)
    else:  # a model logged before tasks read folders in batches
        read = served.read_folder(folder, cfg.on_bad_image) if served is not None else None
        batches = None if read is None else iter([read])
    if batches is None:
        schema = pyfunc.metadata.get_input_schema()
        columns = [c for c in (schema.inputs if schema is not None else []) if getattr(c, "name", None)]
        takes = ", ".join(c.name for c in columns[:5]) + (" …" if len(columns) > 5 else "")
        raise ConfigError(f"input: {cfg.input} is a folder, but {cfg.model_uri} does not read folders "
                          f"(its input columns: {takes or 'not declared'}); pass a .parquet file")
    for read in batches:
        skipped.extend(read.skipped)
        if read.names:
            yield pd.DataFrame({"file": read.names}), read.rows


def read_parquet(path: Path, origin: str, pyfunc: Any, batch_size: int) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """(row ids, the model's input columns) a batch of rows at a time; a `file` column names the rows too."""
    try:
        source = pq.ParquetFile(path)
    except Exception as exc:
        raise DataError(f"input: {origin}: unreadable parquet: {first_line(exc)}") from exc
    if source.metadata.num_rows == 0:
        raise DataError(f"input: {origin} has no rows")
    names = source.schema_arrow.names
    schema = pyfunc.metadata.get_input_schema()
    wanted = [c.name for c in schema.inputs if getattr(c, "name", None)] if schema is not None else []
    missing = [c for c in wanted if c not in names]
    if missing:
        raise DataError(f"input: {origin} lacks the model's input column(s) {', '.join(missing[:5])}")
    columns = (wanted + (["file"] if "file" in names and "file" not in wanted else [])) if wanted else None
    start = 0
    for batch in source.iter_batches(batch_size=batch_size, columns=columns):
        frame = batch.to_pandas()
        ids = pd.DataFrame({"row_id": range(start, start + len(frame))})
        if "file" in frame.columns:
            ids["file"] = frame["file"].astype(str).to_numpy()
        start += len(frame)
        yield ids, frame[wanted] if wanted else frame


def _as_frame(answer: Any) -> pd.DataFrame:
    return answer if isinstance(answer, pd.DataFrame) else pd.DataFrame({"prediction": list(answer)})
