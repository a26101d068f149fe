"""The task contract: what a data module gives the steps, so that no step knows any task.

A task is a data module (a LightningDataModule built by `data._target_`), a
LightningModule (`model._target_`) and a served model, the class that turns
the rows users send into the network's inputs and its outputs into answers.
Train, evaluate, predict, the step cache and the registry reach a task only
through what is declared here; everything task-specific (feature columns,
image decoding, vocabularies) stays in the task's own module. `tests/tasks/`
holds a task defined entirely outside this package, as a user's would be.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from trainflow.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from trainflow.data.dataset import Manifest

# Data keys every split-based module takes that decide how batches are served,
# not what the dataset holds (the step cache leaves them out of prepare_data's key).
LOADER_KEYS = ("batch_size", "num_workers", "pin_memory", "persistent_workers", "uri")


class ServedModel:
    """A task's serving side: requests in, answers out, beside the data module whose data it decodes.

    The registry wraps it in one MLflow PythonModel (registry.pyfunc), so a
    task never touches MLflow; `meta` is what `serving_spec` recorded
    (labels, vocabularies, transforms), `module` the trained LightningModule
    in eval mode.
    """

    def __init__(self, module: Any, meta: dict[str, Any]) -> None:
        self.module = module
        self.meta = meta

    @property
    def label_names(self) -> list[str]:
        return list(self.meta["label_names"])

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """One answer row per request row; raise ValueError naming a missing or unreadable column."""
        raise NotImplementedError

    def read_folder(self, folder: Path, on_bad_image: str) -> FolderRows | None:
        """How the predict step turns a folder of raw files into request rows; None: this task reads no folders."""
        return None

    def iter_folder(self, folder: Path, on_bad_image: str, batch_size: int) -> Iterator[FolderRows] | None:
        """The folder's request rows a batch at a time, so predict holds one batch of files, not the folder.

        By default `read_folder`'s rows as one batch; a task whose files are
        large (images) yields batches of `batch_size` itself.
        """
        rows = self.read_folder(folder, on_bad_image)
        return None if rows is None else iter([rows])


@dataclass
class FolderRows:
    """A folder read for predict: row names, the request rows, and files left out (`on_bad_image=skip`)."""

    names: list[str]
    rows: pd.DataFrame
    skipped: list[str]


@dataclass
class ServingSpec:
    """What the registry logs with the weights: the served class, its meta.json, and an example request."""

    served: type[ServedModel]
    meta: dict[str, Any]
    example: pd.DataFrame


@runtime_checkable
class TaskDataModule(Protocol):
    """What train, evaluate, predict, the cache and the registry ask of a data module.

    Beside Lightning's loaders and `setup`, a task's data module provides:
    """

    #: data keys that decide what the network sees for an input (an image size,
    #: an eval transform): evaluate takes them from the trained model, and they
    #: change no dataset, so prepare_data's cache key leaves them out.
    preprocessing_keys: ClassVar[tuple[str, ...]]
    #: keys of `preprocessing_keys` that apply to training batches only (augmentation):
    #: also not part of a dataset, but never taken over by evaluate.
    training_only_keys: ClassVar[tuple[str, ...]]

    def build_dataset(self, folder: Path) -> Manifest:
        """Write the splits and manifest.json into `folder` (what prepare_data logs)."""
        ...

    def model_kwargs(self) -> dict[str, Any]:
        """Model config keys only the dataset knows (class names, vocabulary sizes); {} for none.

        Asked once the dataset is set, before the model is built; train writes
        them into `cfg.model`, so the logged model config rebuilds the same network.
        """
        ...

    def serving_spec(self) -> ServingSpec:
        """How the registered model reads requests: asked after fit, with the test split set up."""
        ...


def probabilities_frame(probs: Any, label_names: list[str]) -> pd.DataFrame:
    """Every classifier's answer: one row per sample, the best label, its probability, and every class's."""
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


def task_data_module(datamodule: Any, target: str) -> TaskDataModule:
    """`datamodule` as the contract says, or one line naming the config's `_target_` and what it lacks."""
    if not isinstance(datamodule, TaskDataModule):
        lacking = [name for name in ("build_dataset", "model_kwargs", "serving_spec", "preprocessing_keys",
                                     "training_only_keys") if not hasattr(datamodule, name)]
        raise ConfigError(f"data._target_: {target} is not a trainflow task data module "
                          f"(lacks {', '.join(lacking)}; see trainflow.data.task.TaskDataModule)")
    return datamodule
