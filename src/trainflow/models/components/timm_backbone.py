"""A timm network as the classifier's `net`: weights from a file or an MLflow URI, never from a hub.

Steps run offline and must be reproducible from what they logged, so
`pretrained` names a file (a plain state dict, a Lightning checkpoint, or
safetensors) or an MLflow artifact URI of one; `pretrained=true` or a hub
id (`hf-hub:org/name`, `timm/name`, any other URL) fails at once. The
weights are loaded when fit starts (`load_pretrained`, called from the
LightningModule's `setup("fit")`), not when the network is built:
evaluate and the served model rebuild the network from the logged config
and load their own weights, and must not need the file the training run
started from.

`freeze_encoder` freezes whole layers from the input: `true` all of the
encoder, a fraction the first `floor(fraction * layers)` of them. "Layers"
are timm's own layer groups (stem, then each block; those layer-wise LR
decay uses) minus the classifier, which always trains. Frozen BatchNorm
layers stay in eval mode, so their running statistics stay as loaded.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainflow.errors import ConfigError, first_line
from trainflow.fetch import single_file
from trainflow.models.components.pretrained_source import WEIGHT_SUFFIXES, check_pretrained_source

log = logging.getLogger(__name__)


class TIMMBackbone(nn.Module):
    """`timm.create_model(model_name, num_classes=...)` with offline weights and layer freezing."""

    # Run by config validation before any step work (trainflow.config.validate). Its module
    # imports no torch, so the override precheck runs it too (trainflow.config.static_targets).
    check_config = staticmethod(check_pretrained_source)

    def __init__(self, model_name: str = "efficientnet_b0", pretrained: bool | str = False,
                 num_classes: int | None = None, freeze_encoder: bool | float = False, drop_rate: float = 0.0,
                 timm_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.check_config("model.net", {"pretrained": pretrained})
        if num_classes is None:
            raise ConfigError("model.net.num_classes: not set; the train step takes it from the dataset "
                              "(model.num_classes), or set it in the config")
        import timm  # here, not at module level: imports the digits path never pays

        try:
            self.model = timm.create_model(model_name, pretrained=False, num_classes=num_classes,
                                           drop_rate=drop_rate, **(timm_kwargs or {}))
        except RuntimeError as exc:
            raise ConfigError(f"model.net.model_name={model_name}: {exc} (see timm.list_models())") from exc
        self.model_name = model_name
        self.pretrained: str | None = str(pretrained) if pretrained else None
        self.layers = encoder_layers(self.model)
        self.frozen_layers = freeze_layers(self.model, self.layers, freeze_fraction(freeze_encoder))
        self._pretrained_loaded = False
        # Lightning (>= 2.2) keeps each module's mode as it finds it, so frozen BatchNorm starts in eval here
        self.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def num_trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def train(self, mode: bool = True) -> TIMMBackbone:
        """Whoever calls `.train()` (a user, a loop), frozen BatchNorm goes straight back to eval."""
        super().train(mode)
        if mode:
            for module in self.model.modules():
                if _frozen_norm(module):
                    module.eval()
        return self

    def load_pretrained(self) -> Path | None:
        """Load `pretrained` into the network (once); the local file it read, or None."""
        if not self.pretrained or self._pretrained_loaded:
            return None
        path = resolve_weights(self.pretrained)
        load_weights(self.model, read_state_dict(path, self.pretrained), self.pretrained)
        self._pretrained_loaded = True
        log.info("loaded pretrained weights for %s from %s", self.model_name, self.pretrained)
        return path


def freeze_fraction(freeze_encoder: bool | float) -> float:
    if isinstance(freeze_encoder, bool):
        return 1.0 if freeze_encoder else 0.0
    if not isinstance(freeze_encoder, int | float) or not 0 <= freeze_encoder <= 1:
        raise ConfigError(f"model.net.freeze_encoder={freeze_encoder!r}: expected true, false or a fraction in [0, 1]")
    return float(freeze_encoder)


def encoder_layers(model: nn.Module) -> list[list[str]]:
    """Parameter names of each encoder layer, in order from the input; the classifier is not one."""
    head = {id(p) for p in _classifier(model).parameters()}
    params = dict(model.named_parameters())
    try:
        from timm.models import group_parameters

        groups = group_parameters(model, model.group_matcher(coarse=False))  # type: ignore[operator]
        ordered = [groups[k] for k in sorted(groups)]
    except (AttributeError, NotImplementedError):
        # no layer groups: each top-level child, in registration (= forward) order
        ordered = [[f"{child}.{n}" for n, _ in module.named_parameters()] for child, module in model.named_children()]
    layers = [[n for n in names if id(params[n]) not in head] for names in ordered]
    return [layer for layer in layers if layer]


def freeze_layers(model: nn.Module, layers: list[list[str]], fraction: float) -> int:
    """Freeze the first `floor(fraction * len(layers))` layers; how many that was."""
    count = math.floor(fraction * len(layers) + 1e-9)  # 0.3 * 10 is 2.9999…
    frozen = {name for layer in layers[:count] for name in layer}
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    return count


def _classifier(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    return head if isinstance(head, nn.Module) else nn.Identity()


def _frozen_norm(module: nn.Module) -> bool:
    params = list(module.parameters(recurse=False))
    return (isinstance(module, nn.modules.batchnorm._BatchNorm) and bool(params)
            and not any(p.requires_grad for p in params))


def resolve_weights(uri: str) -> Path:
    """A local weights file for a path or an MLflow artifact URI (a folder holding one file is fine)."""
    dst = Path(tempfile.mkdtemp(prefix="trainflow-weights-"))
    return single_file(uri, dst, "model.net.pretrained", WEIGHT_SUFFIXES)


def read_state_dict(path: Path, origin: str) -> dict[str, torch.Tensor]:
    """Tensors by timm's key names, from a state dict, a Lightning checkpoint or safetensors."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"model.net.pretrained: {origin} is not a weights file that loads without pickle "
                          f"(torch.load(weights_only=True)): {first_line(exc)}") from exc
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]  # a Lightning checkpoint
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ConfigError(f"model.net.pretrained: {origin} holds no state dict of tensors")
    state = _strip(dict(raw), "module.")
    if any(k.startswith("net.") for k in state):  # a LightningModule's: its network, not its metric states
        state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    return _strip(state, "model.")


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys without a wrapper's prefix, when every key has it (DDP's `module.`, this class's `model.`)."""
    if all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load every encoder weight; a classifier of another shape (other classes) starts fresh."""
    head = {id(p) for p in _classifier(model).parameters()}
    own = model.state_dict()
    head_keys = {n for n, p in model.named_parameters() if id(p) in head}
    mismatched_head = {k for k in head_keys if k in state and state[k].shape != own[k].shape}
    if mismatched_head:
        log.info("%s: classifier %s has another shape; it starts from random weights", origin,
                 ", ".join(sorted(mismatched_head)))
    state = {k: v for k, v in state.items() if k not in mismatched_head}
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    result = model.load_state_dict({k: v for k, v in state.items() if k not in wrong}, strict=False)
    missing = [k for k in result.missing_keys if k not in head_keys]  # a headless file: the head starts fresh
    problems = [f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", list(result.unexpected_keys)),
                                    ("other shape", wrong)) if keys]
    if problems:
        raise ConfigError(f"model.net.pretrained: {origin} does not fit this network ({'; '.join(problems)})")
