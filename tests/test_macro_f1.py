"""Evaluate's macro F1 is the number the train run logged as test/f1, not a mean over every label row."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient
from torchmetrics.classification import MulticlassF1Score

from helpers import compose_config, using_store
from trainflow.tracking.run import step_run
from trainflow.training.metrics import classification_report

QUIET = ["experiment=ud_ewt_tiny", "extras.print_config=false", "callbacks.rich_progress_bar=null",
         "callbacks.model_summary=null", "trainer.enable_progress_bar=false", "registry.register=false"]


def test_a_class_nobody_has_or_predicts_is_left_out_as_in_training() -> None:
    # classes 0 (<pad>) and 3 never occur in targets nor predictions
    targets = torch.tensor([1, 1, 2, 2, 4, 4])
    preds = torch.tensor([1, 2, 2, 2, 4, 1])
    probs = torch.nn.functional.one_hot(preds, num_classes=5).float()
    report = classification_report(probs, targets, ["<pad>", "a", "b", "c", "d"])
    trained = MulticlassF1Score(num_classes=5, average="macro", validate_args=False)(preds, targets)
    assert report["macro"]["test/f1_macro"] == pytest.approx(float(trained))
    # the table still lists every label; its plain mean is the number that used to be logged
    assert list(report["table"].label) == ["<pad>", "a", "b", "c", "d"]
    assert float(report["table"].f1.mean()) < report["macro"]["test/f1_macro"]


def test_evaluate_logs_the_train_runs_test_f1(tmp_path) -> None:
    from trainflow.training.evaluate import evaluate
    from trainflow.training.train import train

    with using_store(tmp_path) as uri:
        cache = [f"paths.cache_dir={tmp_path / 'cache'}"]
        # trained long enough that it stops predicting the tags the test split lacks
        fit = ["trainer.max_epochs=25", "model.optimizer.lr=0.02", "callbacks.early_stopping=null"]
        cfg = compose_config("train", [*QUIET, *cache, *fit], tmp_path / "train")
        with step_run("train", cfg) as train_run:
            trained = train(cfg, train_run)
        cfg = compose_config("evaluate", [*QUIET, *cache, f"ckpt_path=runs:/{train_run.run_id}/checkpoints/best"],
                             tmp_path / "evaluate")
        with step_run("evaluate", cfg) as eval_run:
            result = evaluate(cfg, eval_run)
    logged = MlflowClient(uri).get_run(eval_run.run_id).data.metrics
    assert logged["test/f1_macro"] == pytest.approx(trained.metrics["test/f1"], abs=1e-6)
    assert logged["test/f1"] == pytest.approx(trained.metrics["test/f1"], abs=1e-6)
    # the tagger's label set has rows that the test split never touches (<pad> at least):
    # a plain mean over the table would have disagreed
    unused = result.per_class[(result.per_class.support == 0)]
    assert len(unused) > 0
    assert float(result.per_class.f1.mean()) != pytest.approx(logged["test/f1_macro"])
