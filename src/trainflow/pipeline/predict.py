"""The predict step: a model's answers for a folder of images or a parquet file, as run artifacts.

The model is loaded as the MLflow pyfunc it was logged as, so predict does
exactly what serving does (the eval transform for images, feature columns for
digits, tokens for a tagger) and works for any trainflow model. Rows are named
by file (a folder) or numbered (a parquet file); the model's columns follow
(`label`, `probability`, `prob_<label>` for classifiers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from trainflow.data.images import IMAGE_SUFFIXES, BadImage, open_image
from trainflow.errors import ConfigError, DataError, UriError
from trainflow.tracking import tags as tag
from trainflow.tracking.datasets import is_remote
from trainflow.tracking.registry import resolve_model
from trainflow.tracking.run import StepRun

log = logging.getLogger(__name__)

ARTIFACT_DIR = "predictions"
BAD_IMAGE_POLICIES = ("raise", "skip")


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
    run.client.set_tag(run.run_id, tag.PREDICTED, cfg.model_uri)
    if model.run_id:
        run.client.set_tag(run.run_id, tag.UPSTREAM_TRAIN, model.run_id)
    pyfunc = mlflow.pyfunc.load_model(str(model.local_dir))
    local = local_input(str(cfg.input), run.output_dir / "input")
    skipped: list[str] = []
    if local.is_dir():
        ids, frame, skipped = read_image_folder(local, image_column(pyfunc, cfg), cfg.on_bad_image)
    else:
        ids, frame = read_parquet(local, str(cfg.input), pyfunc)

    with run.timed("predict"):
        answers = [_as_frame(pyfunc.predict(frame.iloc[start:start + cfg.batch_size].reset_index(drop=True)))
                   for start in range(0, len(frame), cfg.batch_size)]
    predictions = pd.concat([ids.reset_index(drop=True), pd.concat(answers, ignore_index=True)], axis=1)
    folder = run.output_dir / ARTIFACT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    parquet, csv = folder / "predictions.parquet", folder / "predictions.csv"
    predictions.to_parquet(parquet, index=False)
    predictions.to_csv(csv, index=False)
    run.client.log_artifacts(run.run_id, str(folder), ARTIFACT_DIR)
    run.client.log_metric(run.run_id, "predict/rows", len(predictions))
    run.client.log_metric(run.run_id, "predict/skipped_images", len(skipped))
    uri = run.artifact_uri(f"{ARTIFACT_DIR}/predictions.parquet")
    run.set_output(uri)
    print(f"predictions: {csv}", flush=True)
    return PredictResult(predictions, csv, parquet, uri, skipped)


def local_input(uri: str, dst: Path) -> Path:
    """The input as a local path: MLflow artifact URIs are downloaded, paths checked."""
    if is_remote(uri):
        from mlflow.artifacts import download_artifacts

        dst.mkdir(parents=True, exist_ok=True)
        try:
            return Path(download_artifacts(artifact_uri=uri, dst_path=str(dst)))
        except Exception as exc:
            raise UriError(f"input: cannot download {uri}: {str(exc).strip().splitlines()[0]}") from exc
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.exists():
        raise UriError(f"input: no such file or folder: {uri}")
    if path.is_file() and path.suffix.lower() != ".parquet":
        raise DataError(f"input: {uri} is neither a folder of images nor a .parquet file")
    return path


def image_column(pyfunc: Any, cfg: DictConfig) -> str:
    """The model's one binary input column: a folder of images needs a model that takes image bytes."""
    from mlflow.types import DataType

    schema = pyfunc.metadata.get_input_schema()
    columns = [c for c in (schema.inputs if schema is not None else []) if getattr(c, "name", None)]
    binary = [c.name for c in columns if c.type == DataType.binary]
    if len(binary) != 1:
        takes = ", ".join(c.name for c in columns[:5]) + (" …" if len(columns) > 5 else "")
        raise ConfigError(f"input: {cfg.input} is a folder of images, but {cfg.model_uri} does not take images "
                          f"(its input columns: {takes or 'not declared'}); pass a .parquet file")
    return binary[0]


def read_image_folder(folder: Path, column: str, on_bad_image: str) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(file names, a frame of image bytes, skipped files); every image is decoded once here, so a bad
    file is named instead of failing a batch."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    names, images, skipped = [], [], []
    for path in files:
        name = path.relative_to(folder).as_posix()
        try:
            data = path.read_bytes()
            open_image(data)
        except (OSError, BadImage) as exc:
            if on_bad_image == "raise":
                raise DataError(f"{path}: not a readable PNG/JPEG image ({exc}); on_bad_image=skip leaves "
                                "such files out") from exc
            skipped.append(name)
            continue
        names.append(name)
        images.append(data)
    if skipped:
        log.warning("skipped %d unreadable image(s) under %s: %s", len(skipped), folder, ", ".join(skipped[:5]))
    if not images:
        raise DataError(f"input: no readable .png/.jpg/.jpeg images under {folder}")
    return pd.DataFrame({"file": names}), pd.DataFrame({column: images}), skipped


def read_parquet(path: Path, origin: str, pyfunc: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(row ids, the model's input columns); a `file` column, as in dataset splits, names the rows too."""
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:
        raise DataError(f"input: {origin}: unreadable parquet: {str(exc).strip().splitlines()[0]}") from exc
    if frame.empty:
        raise DataError(f"input: {origin} has no rows")
    ids = pd.DataFrame({"row_id": range(len(frame))})
    if "file" in frame.columns:
        ids["file"] = frame["file"].astype(str).to_numpy()
    schema = pyfunc.metadata.get_input_schema()
    wanted = [c.name for c in schema.inputs if getattr(c, "name", None)] if schema is not None else []
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataError(f"input: {origin} lacks the model's input column(s) {', '.join(missing[:5])}")
    return ids, frame[wanted] if wanted else frame


def _as_frame(answer: Any) -> pd.DataFrame:
    return answer if isinstance(answer, pd.DataFrame) else pd.DataFrame({"prediction": list(answer)})
