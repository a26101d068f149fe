"""The registered model: labels and probabilities out, not raw logits.

The artifact holds the network's weights (a plain state dict, loaded with
`weights_only=True`), the model config node that builds the network, and the
label names. MLflow stores the PythonModel object itself with cloudpickle:
loading any pyfunc model runs pickle, so load models only from a registry you
trust.
"""

from __future__ import annotations

import json
from typing import Any

from mlflow.pyfunc import PythonModel


class LabelledClassifier(PythonModel):
    """Rows of features in; `label`, `probability` and `prob_<label>` columns out."""

    def load_context(self, context: Any) -> None:
        import torch
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        meta = json.loads(open(context.artifacts["meta"]).read())  # noqa: SIM115
        self.features: list[str] = meta["features"]
        self.label_names: list[str] = meta["label_names"]
        module = instantiate(OmegaConf.load(context.artifacts["model_config"]), _convert_="all")
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        module.load_state_dict(state)
        module.eval()
        self.module = module

    def predict(self, context, model_input, params=None):
        # No annotations: MLflow would read them as a schema of its own; the
        # logged signature (a DataFrame of feature columns) is the schema.
        import numpy as np
        import pandas as pd
        import torch

        missing = [f for f in self.features if f not in model_input.columns]
        if missing:
            raise ValueError(f"input lacks feature column(s): {', '.join(missing[:5])}")
        x = torch.as_tensor(model_input[self.features].to_numpy(dtype=np.float32, copy=True))
        with torch.no_grad():
            probs = torch.softmax(self.module(x), dim=-1).numpy()
        best = probs.argmax(axis=1)
        out = pd.DataFrame({
            "label": [self.label_names[i] for i in best],
            "probability": probs[np.arange(len(best)), best].astype(np.float64),
        })
        for j, name in enumerate(self.label_names):
            out[f"prob_{name}"] = probs[:, j].astype(np.float64)
        return out
