"""A classification LightningModule: one shared step, torchmetrics per stage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class ClassificationModule(LightningModule):
    """`net` maps inputs to logits; everything else is bookkeeping.

    Metrics are accumulated per step and logged once per epoch: per-step
    logging is what makes Lightning + MLflow twice as slow as a bare loop on
    small models.
    """

    def __init__(self, net: nn.Module, optimizer: OptimizerFactory,
                 scheduler: SchedulerFactory | None = None, num_classes: int = 10,
                 label_names: list[str] | None = None, scheduler_monitor: str = "val/loss") -> None:
        super().__init__()
        # Modules and factories stay out of the checkpoint's hyperparameters:
        # pickled callables would force `weights_only=False` on every load.
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.criterion = nn.CrossEntropyLoss()
        self.label_names = list(label_names) if label_names else [str(i) for i in range(num_classes)]
        # Argument validation and NaN checks are a large part of a metric update's
        # cost (bench/README.md); the inputs are argmax indices and a finite loss by construction.
        fast: dict[str, Any] = {"validate_args": False}
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro", **fast)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro", **fast)
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro", **fast)
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.test_loss = MeanMetric(nan_strategy="disable")
        self.val_acc_best = MaxMetric()
        # in the checkpoint, so a resumed run keeps its best epoch
        self.val_acc_best.persistent(True)
        self.val_scores = self.extra_scores(num_classes, "val/")
        self.test_scores = self.extra_scores(num_classes, "test/")
        self.epoch_scores: dict[str, torch.Tensor] = {}  # the last epoch's extra scores, by logged name

    def extra_scores(self, num_classes: int, prefix: str) -> MetricCollection | None:
        """Metrics beyond loss and accuracy for validation and test (`<prefix>f1`, ...); none here.

        Subclasses return a MetricCollection; it is updated with the same
        masked predictions as accuracy and logged once per epoch.
        """
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_start(self) -> None:
        # Sanity-check validation must not count as the best epoch; a resumed
        # fit keeps the best it restored.
        self.val_loss.reset()
        self.val_acc.reset()
        if self.val_scores is not None:
            self.val_scores.reset()
        if self.trainer.ckpt_path is None:
            self.val_acc_best.reset()

    def mask_outputs(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop positions that must not count (identity for one label per sample).

        Token tasks override this to remove padding from the loss and every
        metric.
        """
        return logits, targets

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits, targets = self.mask_outputs(self.forward(x), y)
        loss = self.criterion(logits, targets)
        return loss, logits.argmax(dim=-1), targets

    def predict_probabilities(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities and targets of the positions that count (evaluate's report)."""
        x, y = batch
        logits, targets = self.mask_outputs(self.forward(x), y)
        return torch.softmax(logits, dim=-1), targets

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, preds, targets = self.model_step(batch)
        self.train_loss.update(loss.detach())
        self.train_acc.update(preds, targets)
        return loss

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train", self.train_loss, self.train_acc)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, preds, targets = self.model_step(batch)
        self.val_loss.update(loss)
        self.val_acc.update(preds, targets)
        if self.val_scores is not None:
            self.val_scores.update(preds, targets)

    def on_validation_epoch_end(self) -> None:
        acc = self._log_epoch("val", self.val_loss, self.val_acc, self.val_scores)
        if self.trainer.sanity_checking:  # a few batches; a resumed fit runs it after restoring the best
            return
        self.val_acc_best.update(acc)
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, preds, targets = self.model_step(batch)
        self.test_loss.update(loss)
        self.test_acc.update(preds, targets)
        if self.test_scores is not None:
            self.test_scores.update(preds, targets)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_loss, self.test_acc, self.test_scores)

    def _log_epoch(self, stage: str, loss: MeanMetric, acc: MulticlassAccuracy,
                   scores: MetricCollection | None = None) -> torch.Tensor:
        """compute() reduces across DDP ranks; values are logged once, then reset."""
        value = acc.compute()
        self.log(f"{stage}/loss", loss.compute(), sync_dist=False, prog_bar=True)
        self.log(f"{stage}/acc", value, sync_dist=False, prog_bar=True)
        if scores is not None:
            self.epoch_scores = scores.compute()
            self.log_dict(self.epoch_scores, sync_dist=False)
            scores.reset()
        loss.reset()
        acc.reset()
        return value

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": self.scheduler_factory(optimizer=optimizer),
                "monitor": self.scheduler_monitor,
                "interval": "epoch",
                "frequency": 1,
            },
        }
