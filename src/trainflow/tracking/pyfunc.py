"""Registered models: labels and probabilities out, never raw logits.

A trainflow model artifact holds the network's weights (a plain state dict,
loaded with `weights_only=True`), the model config node that builds the
network, and `meta.json` with what the data module says serving needs (label
names, feature columns, vocabularies, transforms). Each task has one
PythonModel subclass that turns the rows users send into tensors.

MLflow stores the PythonModel object itself with cloudpickle, and the model
carries the `trainflow` package as code: loading any pyfunc model runs that,
so load models only from a registry you trust.
"""

from __future__ import annotations

import json
from typing import Any

from mlflow.pyfunc import PythonModel


class TrainflowModel(PythonModel):
    """Builds the LightningModule from the artifact; subclasses define predict."""

    def load_context(self, context: Any) -> None:
        import torch
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        with open(context.artifacts["meta"]) as handle:
            self.meta: dict[str, Any] = json.load(handle)
        module = instantiate(OmegaConf.load(context.artifacts["model_config"]), _convert_="all")
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        module.load_state_dict(state)
        module.eval()
        self.module = module

    @property
    def label_names(self) -> list[str]:
        return list(self.meta["label_names"])


class LabelledClassifier(TrainflowModel):
    """Rows of feature columns in; `label`, `probability`, `prob_<label>` out."""

    def predict(self, context, model_input, params=None):
        # No annotations: MLflow would read them as a schema of its own; the
        # logged signature (a DataFrame of feature columns) is the schema.
        import numpy as np
        import torch

        features = self.meta["features"]
        missing = [f for f in features if f not in model_input.columns]
        if missing:
            raise ValueError(f"input lacks feature column(s): {', '.join(missing[:5])}")
        x = torch.as_tensor(model_input[features].to_numpy(dtype=np.float32, copy=True))
        with torch.no_grad():
            probs = torch.softmax(self.module(x), dim=-1).numpy()
        return probabilities_frame(probs, self.label_names)


def probabilities_frame(probs: Any, label_names: list[str]) -> Any:
    """One row per sample: the best label, its probability, and every class's."""
    import numpy as np
    import pandas as pd

    best = probs.argmax(axis=1)
    out = pd.DataFrame({
        "label": [label_names[i] for i in best],
        "probability": probs[np.arange(len(best)), best].astype(np.float64),
    })
    for j, name in enumerate(label_names):
        out[f"prob_{name}"] = probs[:, j].astype(np.float64)
    return out
