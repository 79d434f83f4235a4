"""A small classifier and its :class:`continual.loop.Learner` (the digits benchmark, the tests)."""
from __future__ import annotations

import torch
from torch import nn

from continual.learner import Learner


class MLP(nn.Module):
    """x -> ReLU(fc1) -> ReLU(fc2) = phi(x) -> head. ``features`` is phi (iCaRL's feature map)."""

    def __init__(self, n_in: int = 64, hidden: int = 256, n_out: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc2(torch.relu(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def collate_xy(examples: list) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(x, y), ...]`` -> (X [B, d], y [B])."""
    xs, ys = zip(*examples)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def classifier_learner(model: nn.Module, lr: float = 1e-3, batch_size: int = 32, epochs: int = 1,
                       seed: int = 0) -> Learner:
    """A learner over ``(x, y)`` examples for a model with ``forward(x) -> logits`` and ``features(x)``."""
    return Learner(
        model=model,
        forward=lambda m, batch: (m(batch[0]), batch[1]),
        collate=collate_xy,
        embed=lambda m, batch: m.features(batch[0]),
        lr=lr, batch_size=batch_size, epochs=epochs, seed=seed,
    )
