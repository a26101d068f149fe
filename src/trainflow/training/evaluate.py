"""The evaluate step: test a model or checkpoint in a run of its own, maybe promote it."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from trainflow.config.validate import check_targets
from trainflow.data.task import task_data_module
from trainflow.errors import ConfigError, DataError
from trainflow.fetch import file_digest
from trainflow.registry.model_card import write_model_card
from trainflow.registry.versions import Promotion, ResolvedModel, promote_if_better, resolve_model
from trainflow.tracking import tags as tag
from trainflow.tracking.datasets import FetchedDataset, dataset_for_step, lineage_data_uri
from trainflow.tracking.lightning import RunLogger
from trainflow.tracking.metrics import metric_entities
from trainflow.tracking.run import StepRun
from trainflow.training.checkpoints import resolve_checkpoint
from trainflow.training.metrics import classification_report, confusion_figure, higher_is_better, scalar_metrics
from trainflow.training.restore import load_weights

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    source: str
    dataset_digest: str
    promotion: Promotion | None = None
    per_class: Any = field(default=None, repr=False)


@dataclass
class _Subject:
    """What is evaluated: a module with weights, and where it came from."""

    module: Any
    source: str
    run_id: str | None
    model: ResolvedModel | None = None
    # how the weights' inputs were prepared in training (with_trained_preprocessing)
    recorded_data: dict[str, Any] = field(default_factory=dict)


def evaluate(cfg: DictConfig, run: StepRun) -> EvalResult:
    import lightning as L

    if not cfg.get("model_uri") and not cfg.get("ckpt_path"):
        raise ConfigError("model_uri / ckpt_path: one is required (models:/NAME@champion, runs:/<id>/checkpoints/best)")
    check_targets(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    subject = _load_subject(cfg, run)
    data = trained_preprocessing(cfg.data, subject.recorded_data)
    datamodule = task_data_module(instantiate(data, _convert_="all"), cfg.data._target_)
    data_cfg = _with_lineage(cfg.data, run, subject)
    dataset = dataset_for_step(data_cfg, datamodule, run, Path(cfg.paths.cache_dir) / "datasets", "evaluation")

    logger = RunLogger(run.client, run.run_id, cfg.tracking.flush_every_s, log_checkpoints=False)
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=[], enable_checkpointing=False)
    try:
        trainer.test(model=subject.module, datamodule=datamodule)
    finally:
        logger.close()
    metrics = scalar_metrics(trainer.callback_metrics)
    per_class = _log_report(run, subject.module, datamodule, dataset, metrics)
    result = EvalResult(metrics=metrics, source=subject.source, dataset_digest=dataset.manifest.digest,
                        per_class=per_class)
    if subject.model is not None:
        _record_on_model(run, subject.model, metrics, dataset, eval_scope(cfg))
    if cfg.get("promote"):
        result.promotion = _promote(cfg, run, subject, metrics, dataset)
    if subject.model is not None and subject.model.name and subject.model.version:
        write_model_card(run.client, subject.model.name, subject.model.version)  # now with test figures, decision
    run.set_output(subject.source)
    return result


def _load_subject(cfg: DictConfig, run: StepRun) -> _Subject:
    import torch

    if cfg.get("model_uri"):
        model = resolve_model(cfg.model_uri, run.client, run.output_dir / "model")
        artifacts = model.local_dir / "artifacts"
        module = instantiate(OmegaConf.load(artifacts / "model.yaml"), _convert_="all")
        module.load_state_dict(torch.load(artifacts / "weights.pt", map_location="cpu", weights_only=True))
        tags = {tag.EVALUATED: cfg.model_uri, tag.MODEL_DIGEST: file_digest(artifacts / "weights.pt")}
        if model.run_id:
            tags[tag.UPSTREAM_TRAIN] = model.run_id
        run.set_tags(tags)
        return _Subject(module, cfg.model_uri, model.run_id, model, recorded_data=_served_data(artifacts))
    checkpoint = resolve_checkpoint(cfg.ckpt_path, run.output_dir / "checkpoint")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    run_id = cfg.ckpt_path.split("/")[1] if str(cfg.ckpt_path).startswith("runs:/") else None
    model_cfg = trained_model_config(run.client, run_id, cfg.model) or cfg.model
    module = instantiate(model_cfg, _convert_="all", **unset_from_checkpoint(model_cfg, saved))
    load_weights(module, saved["state_dict"], cfg.ckpt_path)
    run.set_tags({tag.EVALUATED: cfg.ckpt_path, tag.MODEL_DIGEST: file_digest(checkpoint)})
    return _Subject(module, cfg.ckpt_path, run_id, recorded_data=dict(saved.get("datamodule_hyper_parameters") or {}))


def trained_model_config(client: Any, run_id: str | None, composed: DictConfig) -> DictConfig | None:
    """The `model` node the run that saved a checkpoint was trained with (its logged config.yaml).

    A checkpoint holds weights, not the network's shape (the module keeps
    `net` out of its hyperparameters so that loading never needs pickle), and
    evaluate's own model config is composed afresh: a run trained with
    `experiment=example` has other layer sizes than the default. The run
    logged its resolved config, so the network is rebuilt from that. None
    when the checkpoint names no run, or its run logged no trainflow config:
    then the configured model is used, and a mismatch fails in one line.

    The logged config is resolved, so a size the dataset decides later (a
    nested `num_classes: ${..num_classes}`) was logged as null. When the
    composed model is the same class, its interpolations stand where the
    logged value is null, so the size the checkpoint records reaches every
    key that refers to it, as it did in training.
    """
    import yaml
    from mlflow.exceptions import MlflowException

    if run_id is None:
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="trainflow-ckpt-config-") as tmp:
            logged = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", tmp)).read_text())
    except (MlflowException, OSError):
        return None
    model = logged.get("model") if isinstance(logged, dict) else None
    if not isinstance(model, dict) or "_target_" not in model:
        return None
    log.info("Rebuilding the network from the model config run %s was trained with", run_id)
    if composed.get("_target_") != model["_target_"]:
        return OmegaConf.create(model)
    merged = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(composed, resolve=False)),
                             OmegaConf.create(_without_nulls(model)))
    assert isinstance(merged, DictConfig)
    return merged


def _without_nulls(node: Any) -> Any:
    """`node` without its null leaves: the keys a training run filled in later, not what it was given."""
    if isinstance(node, dict):
        return {k: _without_nulls(v) for k, v in node.items() if v is not None}
    return node


def trained_preprocessing(data_cfg: DictConfig, recorded: dict[str, Any]) -> DictConfig:
    """`data_cfg` with what its data module declares as preprocessing taken from the trained model."""
    from hydra.utils import get_class

    keys = getattr(get_class(data_cfg._target_), "preprocessing_keys", ())
    return with_trained_preprocessing(data_cfg, recorded, keys)


def with_trained_preprocessing(data_cfg: DictConfig, recorded: dict[str, Any], keys: Sequence[str]) -> DictConfig:
    """`data_cfg` with the preprocessing the weights were trained with in place of its own.

    Evaluate's own `data` config is composed afresh (image_size 224 by
    default) and knows nothing of the run that trained the model; building
    test batches from it would score inputs the model never saw in training,
    and a number the served model (which applies the eval transform stored
    with it) does not reproduce. `recorded` is what the model carries: its
    meta.json, or the data module's hyperparameters in a checkpoint. `keys`
    are the data module's `preprocessing_keys` (task contract); a module that
    declares none (digits, tagging) is left alone. Each key is
    replaced whole: merged into the configured pipeline, a step the training
    run did not have would survive.
    """
    taken = {key: recorded[key] for key in keys if key in recorded and key in data_cfg}
    if not taken:
        return data_cfg
    log.info("Evaluating with the preprocessing the model was trained with: %s", ", ".join(sorted(taken)))
    resolved = OmegaConf.to_container(data_cfg, resolve=True)
    assert isinstance(resolved, dict)
    return OmegaConf.create({**resolved, **taken})


def _served_data(artifacts: Path) -> dict[str, Any]:
    """The served model's meta.json (a model logged without one: nothing recorded)."""
    meta = artifacts / "meta.json"
    return dict(json.loads(meta.read_text())) if meta.is_file() else {}


def unset_from_checkpoint(model_cfg: DictConfig, saved: dict[str, Any]) -> dict[str, Any]:
    """Model keys the config leaves null, taken from the checkpoint's hyperparameters.

    Sizes the train step takes from the dataset (vocabularies, tag sets) are
    null in the model config; the checkpoint recorded the values its weights
    were built with. Keys the config sets are left alone.
    """
    hparams = saved.get("hyper_parameters") or {}
    return {str(key): hparams[key] for key in model_cfg
            if model_cfg.get(key) is None and hparams.get(key) is not None}


def _with_lineage(data_cfg: DictConfig, run: StepRun, subject: _Subject) -> DictConfig:
    """`data.uri`, else the dataset the model was trained on."""
    if data_cfg.get("uri"):
        return data_cfg
    uri = lineage_data_uri(run.client, subject.run_id)
    if uri is None:
        raise DataError(f"data.uri: not given, and {subject.source} has no training-data lineage; pass data.uri")
    data_cfg = data_cfg.copy()
    OmegaConf.update(data_cfg, "uri", uri, force_add=True)
    log.info("Evaluating on the training run's dataset %s", uri)
    return data_cfg


def _log_report(run: StepRun, module: Any, datamodule: Any, dataset: FetchedDataset,
                metrics: dict[str, float]) -> Any:
    """Predictions, confusion matrix and per-class P/R/F1 as artifacts of the run."""
    import pandas as pd
    import torch

    module.eval()
    probs, targets = [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            batch_probs, batch_targets = module.predict_probabilities(batch)
            probs.append(batch_probs)
            targets.append(batch_targets)
    p, t = torch.cat(probs), torch.cat(targets)
    names = dataset.manifest.label_names or [str(i) for i in range(p.shape[1])]
    report = classification_report(p, t, names)
    metrics.update(report["macro"])
    run.client.log_batch(run.run_id, metrics=metric_entities(report["macro"]))
    predicted = p.argmax(dim=1).numpy()
    predictions = pd.DataFrame({
        "row_id": range(len(t)),
        "label": [names[i] for i in t.numpy()],
        "predicted": [names[i] for i in predicted],
        "probability": p.max(dim=1).values.numpy().astype("float64"),
    })
    path = run.output_dir / "predictions.parquet"
    run.output_dir.mkdir(parents=True, exist_ok=True)
    predictions.to_parquet(path, index=False)
    run.client.log_artifact(run.run_id, str(path), "evaluation")
    run.client.log_table(run.run_id, report["table"], "evaluation/per_class_metrics.json")
    csv = run.output_dir / "per_class_metrics.csv"
    report["table"].to_csv(csv, index=False)
    run.client.log_artifact(run.run_id, str(csv), "evaluation")
    figure = confusion_figure(report["confusion"], names)
    run.client.log_figure(run.run_id, figure, "evaluation/confusion_matrix.png")
    return report["table"]


def eval_scope(cfg: DictConfig) -> str:
    """How much of the test split a figure covers: figures compare only within one scope."""
    limit = cfg.trainer.get("limit_test_batches")
    if limit is None or (isinstance(limit, float) and limit == 1.0):  # Lightning: int 1 is one batch
        return "all"
    return f"limit_test_batches={limit},batch_size={cfg.data.get('batch_size')}"


def _record_on_model(run: StepRun, model: ResolvedModel, metrics: dict[str, float], dataset: FetchedDataset,
                     scope: str) -> None:
    """Test figures live on the model too: the registry page shows them."""
    test_metrics = {k: v for k, v in metrics.items() if k.startswith("test/")}
    if model.model_id:  # in one request, not one a metric
        run.client.log_batch(run.run_id, metrics=metric_entities(
            test_metrics, model.model_id, dataset_name="test", dataset_digest=dataset.manifest.digest[:36]))
    if model.name and model.version:
        tags: dict[str, str] = {tag.eval_metric(k): str(v) for k, v in test_metrics.items()}
        tags[tag.EVAL_DATA_DIGEST] = dataset.manifest.digest
        tags[tag.EVAL_TEST_SCOPE] = scope
        tags[tag.EVAL_RUN_ID] = run.run_id
        for key, text in tags.items():
            run.client.set_model_version_tag(model.name, model.version, key, text)


def _promote(cfg: DictConfig, run: StepRun, subject: _Subject, metrics: dict[str, float],
             dataset: FetchedDataset) -> Promotion | None:
    model = subject.model
    if model is None or model.name is None or model.version is None:
        # Only registry versions carry aliases; the metrics above still stand.
        log.warning("promote: %s is not a registered model version; nothing to promote", subject.source)
        run.client.set_tag(run.run_id, tag.PROMOTION_DECISION, "skipped: not a registered version")
        return None
    metric = cfg.optimized_metric
    if metric not in metrics:
        raise ConfigError(f"optimized_metric: '{metric}' was not measured (have: {', '.join(sorted(metrics))})")

    def champion_value_on(champion: Any) -> float:
        # The champion was measured on other data: measure it on this digest.
        champ = resolve_model(f"models:/{model.name}/{champion.version}", run.client, run.output_dir / "champion")
        return _score(champ, dataset, metric, cfg)

    promotion = promote_if_better(run.client, model.name, model.version, metric, metrics[metric],
                                  dataset.manifest.digest, higher_is_better(metric), champion_value_on,
                                  scope=eval_scope(cfg))
    record = {
        tag.PROMOTION_DECISION: promotion.decision,
        tag.PROMOTION_METRIC: metric,
        tag.PROMOTION_CANDIDATE: str(promotion.candidate),
        tag.PROMOTION_CHAMPION: "none" if promotion.champion is None else str(promotion.champion),
        tag.PROMOTION_CHAMPION_VERSION: promotion.champion_version or "none",
    }
    run.set_tags(record)
    for key, value in record.items():
        run.client.set_model_version_tag(model.name, model.version, key, value)
    print(f"promotion: {promotion.decision} {model.name}/{model.version} ({metric} {promotion.candidate:.4f} vs "
          f"champion {promotion.champion})", flush=True)
    return promotion


def _score(model: ResolvedModel, dataset: FetchedDataset, metric: str, cfg: DictConfig) -> float:
    """`metric` of another model version on the same dataset folder and test batches (no tracking)."""
    import torch

    artifacts = model.local_dir / "artifacts"
    module = instantiate(OmegaConf.load(artifacts / "model.yaml"), _convert_="all")
    module.load_state_dict(torch.load(artifacts / "weights.pt", map_location="cpu", weights_only=True))
    datamodule = instantiate(trained_preprocessing(cfg.data, _served_data(artifacts)), _convert_="all",
                             uri=str(dataset.path))
    # the candidate's trainer settings: the same device, precision and test batches it was measured on
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False)
    trainer.test(model=module, datamodule=datamodule, verbose=False)
    return float(trainer.callback_metrics[metric])
