"""Metric values as plain floats, and the per-class report evaluate logs."""

from __future__ import annotations

from typing import Any


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Lightning's callback_metrics (tensors) as floats; non-scalars dropped."""
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def higher_is_better(metric: str) -> bool:
    """Losses and errors go down; accuracies, F1 and the like go up."""
    name = metric.rsplit("/", 1)[-1].lower()
    return not any(word in name for word in ("loss", "error", "mse", "mae", "perplexity"))


def classification_report(probs: Any, targets: Any, label_names: list[str]) -> dict[str, Any]:
    """Confusion matrix, per-class precision/recall/F1, and their macro averages.

    The macro averages are torchmetrics' `average="macro"`, as the modules log
    `test/f1` during training: a class that is neither in the targets nor
    predicted (`<pad>`, an `<unk>` tag, a class missing from a small test split)
    is left out rather than counted as an F1 of 0. A mean over the table's rows
    would count it, and `test/f1_macro` would then disagree with the run that
    trained the model on the same data.
    """
    import pandas as pd
    import torch
    from torchmetrics.functional.classification import (
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    preds = torch.as_tensor(probs).argmax(dim=1)
    targets = torch.as_tensor(targets)
    n = len(label_names)
    kwargs: dict[str, Any] = {"num_classes": n, "average": None}
    table = pd.DataFrame({
        "label": label_names,
        "precision": multiclass_precision(preds, targets, **kwargs).numpy(),
        "recall": multiclass_recall(preds, targets, **kwargs).numpy(),
        "f1": multiclass_f1_score(preds, targets, **kwargs).numpy(),
        "support": torch.bincount(targets, minlength=n).numpy(),
    })
    matrix = multiclass_confusion_matrix(preds, targets, num_classes=n).numpy()
    kwargs["average"] = "macro"
    macro = {"test/precision_macro": float(multiclass_precision(preds, targets, **kwargs)),
             "test/recall_macro": float(multiclass_recall(preds, targets, **kwargs)),
             "test/f1_macro": float(multiclass_f1_score(preds, targets, **kwargs))}
    return {"table": table, "confusion": matrix, "macro": macro}


def confusion_figure(matrix: Any, label_names: list[str]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.5 * len(label_names))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(label_names)), label_names, rotation=90)
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if matrix[i, j]:
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    fig.tight_layout()
    return fig
