"""Token classification (part-of-speech tagging) on top of ClassificationModule.

The parent's step, loss, accuracy and `predict_probabilities` all go through
`mask_outputs`; here it flattens (B,T,C) logits to (N,C) and drops padded
positions, so padding counts in neither the loss nor any metric (nor in
evaluate's per-tag report). Macro F1 over tags is logged beside accuracy.
"""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassF1Score

from trainflow.errors import ConfigError
from trainflow.models.classifier import ClassificationModule, OptimizerFactory, SchedulerFactory
from trainflow.models.components.bilstm_tagger import BiLSTMTagger

IGNORE_TAG = -100  # the data's target for padded positions (trainflow.data.tagging.IGNORE_TAG)


class TaggerModule(ClassificationModule):
    """A BiLSTM tagger; vocabulary and tag-set sizes come from the dataset.

    `vocab_size`, `char_vocab_size`, `num_classes` and `label_names` are left
    null in the config: the train step fills them from the data module's
    `model_kwargs()`, and the model config logged with the weights carries them.
    """

    def __init__(self, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None = None,
                 vocab_size: int | None = None, char_vocab_size: int | None = None,
                 num_classes: int | None = None, label_names: list[str] | None = None, pad_index: int = 0,
                 embedding_dim: int = 100, char_embedding_dim: int = 32, char_filters: int = 64,
                 char_kernel_size: int = 3, hidden_size: int = 128, num_layers: int = 1, dropout: float = 0.3,
                 scheduler_monitor: str = "val/loss") -> None:
        sizes = {"vocab_size": vocab_size, "char_vocab_size": char_vocab_size, "num_classes": num_classes}
        unset = [key for key, value in sizes.items() if value is None]
        if unset:
            raise ConfigError(f"model.{unset[0]}: not set; the train step takes it from the dataset "
                              "(a data module with model_kwargs), or set it in the config")
        assert vocab_size is not None and char_vocab_size is not None and num_classes is not None
        net = BiLSTMTagger(vocab_size, char_vocab_size, num_classes, pad_index, embedding_dim, char_embedding_dim,
                           char_filters, char_kernel_size, hidden_size, num_layers, dropout)
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, num_classes=num_classes,
                         label_names=label_names, scheduler_monitor=scheduler_monitor)

    def extra_scores(self, num_classes: int, prefix: str) -> MetricCollection:
        # Tags absent from both predictions and targets are left out of the
        # macro average (torchmetrics), so a small split is not penalised for them.
        f1 = MulticlassF1Score(num_classes=num_classes, average="macro", validate_args=False)
        return MetricCollection({"f1": f1}, prefix=prefix)

    def mask_outputs(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,T,C), (B,T) -> (N,C), (N,): the N real tokens, padding dropped."""
        flat_targets = targets.reshape(-1)
        keep = flat_targets != IGNORE_TAG
        return logits.reshape(-1, logits.size(-1))[keep], flat_targets[keep]
