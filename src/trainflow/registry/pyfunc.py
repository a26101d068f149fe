"""Registered models: labels and probabilities out, never raw logits.

A trainflow model artifact holds the network's weights (a plain state dict,
loaded with `weights_only=True`), the model config node that builds the
network, and `meta.json` with what the data module says serving needs (label
names, feature columns, vocabularies, transforms). One PythonModel serves
every task: it rebuilds the network and hands requests to the task's served
model (`trainflow.data.task.ServedModel`), which lives beside the data module
whose data it decodes. This module knows no task.

MLflow stores the PythonModel object itself with cloudpickle, and the model
carries the `trainflow` package (and a task's own package) as code: loading
any pyfunc model runs that, so load models only from a registry you trust.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pandas as pd
from mlflow.pyfunc import PythonModel

if TYPE_CHECKING:
    from trainflow.data.task import ServedModel


class TaskModel(PythonModel):
    """Builds the LightningModule from the artifact; the task's served model answers requests."""

    def __init__(self, served: type[ServedModel]) -> None:
        self.served_class = served

    def load_context(self, context: Any) -> None:
        import torch
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        with open(context.artifacts["meta"]) as handle:
            meta: dict[str, Any] = json.load(handle)
        module = instantiate(OmegaConf.load(context.artifacts["model_config"]), _convert_="all")
        state = torch.load(context.artifacts["weights"], map_location="cpu", weights_only=True)
        module.load_state_dict(state)
        module.eval()
        self.served = self.served_class(module, meta)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        # `pd.DataFrame` is the one input hint MLflow 3 takes as "no schema of
        # its own" (mlflow.types.type_hints.type_hints_no_signature_inference):
        # it neither infers nor enforces anything from it, and it stops the
        # "Add type hints to the `predict` method" warning on every load. The
        # logged signature (from a real prediction) stays the schema.
        return self.served.predict(model_input)
