"""What fit restores from a start checkpoint: nothing, the weights only, or everything.

    mode          weights  optimizer + scheduler  epoch/step, callbacks, RNG   config
    none          -        -                      -                            no ckpt_path / resume
    weights_only  yes      fresh                  fresh (epoch 0)              ckpt_path=... only_weights_load=true
    full          yes      restored               restored                     ckpt_path=... (or resume=<run_id>)

Weights-only is fine-tuning from an earlier run: its weights, a new
optimizer, new schedule, new early stopping and "best". The weights are
loaded when fit starts (after the module's `setup`, where pretrained weights
go), the same moment Lightning's full restore happens, so a checkpoint always
wins over `pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from omegaconf import DictConfig

from trainflow.errors import ConfigError


@dataclass(frozen=True)
class Restore:
    weights: bool
    training_state: bool  # optimizer, scheduler, loops, callbacks: Lightning's `ckpt_path` restore


RESTORE_MODES = {
    "none": Restore(weights=False, training_state=False),
    "weights_only": Restore(weights=True, training_state=False),
    "full": Restore(weights=True, training_state=True),
}


def restore_mode(cfg: DictConfig) -> str:
    if cfg.get("only_weights_load"):
        if cfg.get("resume"):
            raise ConfigError("only_weights_load=true and resume: a resume restores everything; drop one")
        if not cfg.get("ckpt_path"):
            raise ConfigError("only_weights_load=true needs ckpt_path (a .ckpt path or runs:/<id>/checkpoints/best)")
        return "weights_only"
    return "full" if cfg.get("ckpt_path") or cfg.get("resume") else "none"


class LoadWeights(Callback):
    """Load a checkpoint's weights into the module when fit starts; nothing else of it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        import torch

        state = torch.load(self.path, map_location="cpu", weights_only=True)["state_dict"]
        load_weights(pl_module, state, str(self.path))


def load_weights(module: Any, state: dict[str, Any], source: str) -> None:
    """`module.load_state_dict(state)`, or one line naming the first key that does not fit and both shapes.

    torch's own message starts with "Error(s) in loading state_dict for
    ClassificationModule:" and lists every mismatched key after it; the
    first of those says what differs.
    """
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines()]
        detail = next((line for line in lines[1:] if line), lines[0] if lines else type(exc).__name__)
        raise ConfigError(f"ckpt_path: {source} does not fit the configured model ({detail.rstrip('.')}); "
                          "pass the model overrides it was trained with (e.g. experiment=...)") from exc


def fit_start(cfg: DictConfig, start: Path | None, trainer: Any) -> Path | None:
    """The `ckpt_path` to give `trainer.fit`; in weights-only mode None, and the weights come by callback."""
    mode = RESTORE_MODES[restore_mode(cfg)]
    if start is None or not mode.weights:
        return None
    if mode.training_state:
        return start
    trainer.callbacks.append(LoadWeights(start))
    return None
