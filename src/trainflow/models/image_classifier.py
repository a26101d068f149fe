"""Image classification on top of ClassificationModule: macro precision, recall and F1, frozen layers.

The parent's step, loss, accuracy and optimizer (which already takes only
parameters with `requires_grad`) are reused. Added here: macro precision,
recall and F1 per validation and test epoch (`val/f1`, what `model=timm`
checkpoints on), the best F1 so far (`val/f1_best`, what a sweep of a timm
model optimises by default), pretrained weights
loaded when fit starts, and the number of trainable parameters
(`model/trainable_params`), logged once.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import MulticlassF1Score, MulticlassPrecision, MulticlassRecall

from trainflow.errors import ConfigError
from trainflow.models.classifier import ClassificationModule, OptimizerFactory, SchedulerFactory

log = logging.getLogger(__name__)


def macro_scores(num_classes: int, prefix: str) -> MetricCollection:
    """`<prefix>precision`, `recall`, `f1`, macro-averaged; one shared confusion state (compute groups)."""
    fast: dict[str, Any] = {"num_classes": num_classes, "average": "macro", "validate_args": False}
    return MetricCollection({"precision": MulticlassPrecision(**fast), "recall": MulticlassRecall(**fast),
                             "f1": MulticlassF1Score(**fast)}, prefix=prefix)


class ImageClassificationModule(ClassificationModule):
    """`net` maps (B, 3, H, W) images to logits; `num_classes` and `label_names` come from the dataset.

    Both are null in configs/model/timm.yaml: the train step fills them from
    the data module's `model_kwargs()`, and the model config logged with the
    weights carries them.
    """

    def __init__(self, net: nn.Module, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None = None,
                 num_classes: int | None = None, label_names: list[str] | None = None,
                 scheduler_monitor: str = "val/loss") -> None:
        if num_classes is None:
            raise ConfigError("model.num_classes: not set; the train step takes it from the dataset "
                              "(a data module with model_kwargs), or set it in the config")
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, num_classes=num_classes,
                         label_names=label_names, scheduler_monitor=scheduler_monitor)
        self.val_f1_best = MaxMetric()
        self.val_f1_best.persistent(True)  # in the checkpoint, so a resumed run keeps its best epoch
        self.trainable_params = self.count_params(trainable=True)

    def extra_scores(self, num_classes: int, prefix: str) -> MetricCollection:
        return macro_scores(num_classes, prefix)

    def count_params(self, trainable: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable)

    def setup(self, stage: str) -> None:
        # Pretrained weights are where fit starts; Lightning restores a checkpoint
        # (resume, ckpt_path) after setup, so a restored run still ends up with its own.
        load = getattr(self.net, "load_pretrained", None)
        if stage == "fit" and load is not None:
            load()

    def on_fit_start(self) -> None:
        self.trainable_params = self.count_params(trainable=True)
        total = self.count_params()
        log.info("trainable parameters: %d of %d", self.trainable_params, total)
        for logger in self.loggers:  # on every rank: a Lightning logger writes on rank zero only
            logger.log_metrics({"model/trainable_params": float(self.trainable_params),
                                "model/total_params": float(total)}, step=0)

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path is None:
            self.val_f1_best.reset()
        super().on_train_start()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()  # logs val/f1 among the scores
        if self.trainer.sanity_checking:
            return
        self.val_f1_best.update(self.epoch_scores["val/f1"])
        self.log("val/f1_best", self.val_f1_best.compute(), sync_dist=False)
