"""The network: one hidden layer is plenty for 13 standardised measurements."""

from __future__ import annotations

import torch
from torch import nn


class WineNet(nn.Module):
    def __init__(self, in_features: int = 13, hidden: int = 32, num_classes: int = 3) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
