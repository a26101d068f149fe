"""Where a network's `pretrained` weights may come from, judged by syntax alone.

Kept apart from the network (timm_backbone) so that checking a config needs
no torch: the override precheck runs `check_pretrained_source` before every
step, and importing the network's module would import torch there.
"""

from __future__ import annotations

import re
from typing import Any

from trainflow.errors import ConfigError
from trainflow.fetch import is_artifact_uri

WEIGHT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
# Of the URIs trainflow.fetch downloads, plain http(s) URLs are refused for weights: that is how hub files are fetched.
_URLS = ("http://", "https://")
# How timm names hub weights (timm.create_model("hf-hub:org/name"), pretrained tags "timm/<name>.<tag>")
HUB_PREFIXES = ("hf-hub:", "hf_hub:", "timm/")
# a URI scheme; two letters or more, so a Windows drive (C:\weights.pth) stays a path
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]+:", re.IGNORECASE)


def asks_for_hub(pretrained: Any) -> bool:
    """Whether `pretrained` asks for weights that only a hub or a URL could give.

    Syntax only, never the file system: the served model and evaluate rebuild
    the network from the logged config on machines where the training run's
    weights file does not exist, and must still pass this check.
    """
    if pretrained is True:
        return True
    if not isinstance(pretrained, str) or not pretrained or pretrained.startswith("file:"):
        return False
    if is_artifact_uri(pretrained):  # MLflow's URIs and the artifact stores behind them
        return pretrained.startswith(_URLS)
    if _SCHEME.match(pretrained) is not None:
        return True
    # `timm/resnet18.a1_in1k` is a hub tag; `timm/weights.pth` a relative path to a file
    return pretrained.lower().startswith(HUB_PREFIXES) and not pretrained.lower().endswith(WEIGHT_SUFFIXES)


def check_pretrained_source(path: str, node: Any) -> None:
    """A network's `check_config` hook: refuse hub weights when the config is checked, before any step work.

    A hub id would otherwise be taken for a relative path and fail only
    when fit starts, as a bare "no such file", after the data was read.
    """
    pretrained = node.get("pretrained")
    if asks_for_hub(pretrained):
        value = "true" if pretrained is True else str(pretrained)
        raise ConfigError(
            f"{path}.pretrained={value} would download weights from the Hugging Face hub, which trainflow "
            f"never does at run time; pass a file instead: {path}.pretrained=/path/to/weights.pth "
            "(a state dict, a Lightning .ckpt or .safetensors) or an MLflow URI such as "
            "runs:/<run_id>/checkpoints/best")
