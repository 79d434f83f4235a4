"""Copies of the trainable parameters and their gradients as flat vectors.

Strategies that compare with an earlier model (EWC's anchor, LwF's and iCaRL's teacher) keep a copy of the
trainable parameters only: on a LoRA model that is the adapter (MBs), never the frozen (4-bit) base.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch


def snapshot(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


@contextlib.contextmanager
def swapped(params: Sequence[torch.nn.Parameter], values: Sequence[torch.Tensor]) -> Iterator[None]:
    """Run the model with ``values`` in place of ``params`` (a teacher's forward), then put the exact current
    values back. One model in memory, not two.

    The body runs under ``torch.no_grad``: a graph through swapped-in values would send the teacher's gradients
    into the student's ``.grad``. The swap writes through ``.data`` so that autograd does not see it: the graph
    of the step's own forward, built before, backpropagates through bit-identical values afterwards.
    """
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, v in zip(params, values, strict=True):
                p.data.copy_(v)
            yield
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.data.copy_(v)


def flat_grad(params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """All gradients as one vector (zeros where a parameter has none)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def set_flat_grad(params: Sequence[torch.nn.Parameter], g: torch.Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = g[offset:offset + n].view_as(p).clone()
        offset += n


def grad_of(loss: torch.Tensor, params: Sequence[torch.nn.Parameter]) -> list[torch.Tensor]:
    """d loss / d params without touching ``p.grad`` (zeros for parameters the loss does not reach)."""
    gs = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(gs, params)]
