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


class TokenTagger(TrainflowModel):
    """Tokenized sentences in (column `tokens`, a list of strings per row); one tag per token out.

    Returns `tags` (list of tag names, as long as `tokens`) and `probabilities`
    (the probability of each chosen tag). Tokens are syntactic words, as in
    the treebank the tagger learnt from (`did`, `n't`, not `didn't`).
    """

    batch_size = 64  # sentences per forward pass: bounds memory on long requests

    def predict(self, context, model_input, params=None):
        # No annotations: MLflow would read them as a schema of its own.
        import pandas as pd

        if "tokens" not in model_input.columns:
            raise ValueError("input lacks column 'tokens' (a list of words per sentence)")
        sentences = [_as_words(tokens) for tokens in model_input["tokens"]]
        tags: list[list[str]] = []
        probabilities: list[list[float]] = []
        for start in range(0, len(sentences), self.batch_size):
            batch_tags, batch_probs = self._tag(sentences[start:start + self.batch_size])
            tags.extend(batch_tags)
            probabilities.extend(batch_probs)
        return pd.DataFrame({"tags": tags, "probabilities": probabilities})

    def _tag(self, sentences: list[list[str]]) -> tuple[list[list[str]], list[list[float]]]:
        import torch

        from trainflow.data.tagging import IGNORE_TAG, encode_chars, encode_words, pad_batch

        if not hasattr(self, "_index"):
            self._index = ({w: i for i, w in enumerate(self.meta["words"])},
                           {c: i for i, c in enumerate(self.meta["chars"])})
        word_index, char_index = self._index
        # An empty sentence still needs one position to run the network; it is cut off below.
        examples = [(encode_words(s or [""], word_index, self.meta["lowercase"]),
                     encode_chars(s or [""], char_index, self.meta["max_word_chars"]), [IGNORE_TAG] * max(len(s), 1))
                    for s in sentences]
        inputs, _ = pad_batch(examples)
        with torch.no_grad():
            probs, best = torch.softmax(self.module(inputs), dim=-1).max(dim=-1)
        names = self.label_names
        return ([[names[i] for i in best[row, :len(s)].tolist()] for row, s in enumerate(sentences)],
                [probs[row, :len(s)].double().tolist() for row, s in enumerate(sentences)])


def _as_words(tokens: Any) -> list[str]:
    """A row's tokens as strings: a list, a numpy array (MLflow's schema enforcement), or a string of words."""
    if tokens is None:
        return []
    if isinstance(tokens, str):
        return tokens.split()
    return [str(t) for t in tokens]


class ImageClassifier(TrainflowModel):
    """A column `image` of encoded PNG/JPEG bytes in (base64 text too: JSON requests); one row per image out.

    Returns `label`, `probability` and `prob_<label>` like LabelledClassifier.
    Each image goes through the EVAL transform stored in meta.json (resize,
    normalise) after decoding to RGB the way training did, so a grayscale,
    palette or RGBA file of any size is answered.
    """

    batch_size = 64  # images per forward pass: bounds memory on long requests

    def load_context(self, context: Any) -> None:
        from trainflow.data.images import build_transform

        super().load_context(context)
        self.transform = build_transform(self.meta["eval_transform"])

    def predict(self, context, model_input, params=None):
        # No annotations: MLflow would read them as a schema of its own.
        import numpy as np
        import torch

        from trainflow.data.images import BadImage, image_bytes, transform_image

        column = self.meta.get("image_column", "image")
        if column not in model_input.columns:
            raise ValueError(f"input lacks column '{column}' (PNG/JPEG bytes, or base64 text, per row)")
        probs = [np.zeros((0, len(self.label_names)), dtype=np.float32)]
        values = list(model_input[column])
        for start in range(0, len(values), self.batch_size):
            tensors = []
            for row, value in enumerate(values[start:start + self.batch_size], start):
                try:
                    tensors.append(transform_image(self.transform, image_bytes(value)))
                except BadImage as exc:
                    raise ValueError(f"row {row}: not a readable PNG/JPEG image ({exc})") from exc
            with torch.no_grad():
                probs.append(torch.softmax(self.module(torch.stack(tensors)), dim=-1).numpy())
        return probabilities_frame(np.concatenate(probs), self.label_names)
