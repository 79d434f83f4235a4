"""What a continual-learning strategy needs of a model, apart from the loop that trains it.

``Learner`` (how to batch examples and score a batch), ``head_logits`` (a task's output columns) and
``batches`` live here so that both the hook API (:mod:`continual.hooks`) and the loop
(:mod:`continual.loop`) can import them without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch


def adam(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    # No weight decay: PackNet and per-task adapters rely on a zero gradient leaving a weight unchanged.
    return torch.optim.Adam(params, lr=lr)


@dataclass
class Learner:
    """What strategies need of a model: how to batch examples and how to score a batch."""

    model: torch.nn.Module
    forward: Callable[[torch.nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]
    """``(model, batch) -> (logits [N, C], targets [N])``; targets of -100 are not scored. N is a multiple
    of the batch's example count B, example b owning rows b*N/B .. (b+1)*N/B - 1 (a classifier: N = B;
    a causal LM: its [B, L-1] positions flattened)."""
    collate: Callable[[list], Any]
    """A list of examples -> a batch."""
    embed: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None
    """``(model, batch) -> [B, D]``, one feature vector per example (iCaRL's feature space, the adapter router)."""
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 1
    seed: int = 0
    optimizer: Callable[[list[torch.nn.Parameter], float], torch.optim.Optimizer] = adam
    eval_batch_size: int = 256
    extra: dict = field(default_factory=dict)
    """Free room for pipeline-specific state (the tokenizer, a run directory)."""

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def named_trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}


def head_logits(logits: torch.Tensor, head: Sequence[int] | None) -> torch.Tensor:
    """Keep only a task's output columns (task-incremental heads): the others get the lowest logit."""
    if head is None:
        return logits
    keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    keep[list(head)] = True
    return logits.masked_fill(~keep, torch.finfo(logits.dtype).min)


def batches(examples: Sequence, size: int, generator: torch.Generator | None = None):
    """Lists of ``size`` examples, shuffled when a generator is given."""
    order = torch.randperm(len(examples), generator=generator).tolist() if generator else range(len(examples))
    order = list(order)
    for start in range(0, len(order), size):
        yield [examples[i] for i in order[start:start + size]]
