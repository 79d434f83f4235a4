"""Penalties that keep a network close to what earlier tasks needed (pure torch functions).

EWC: Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks".
Online EWC: Schwarz et al. 2018, "Progress & Compress" (one running Fisher, one anchor).
LwF: Li & Hoiem 2016, "Learning without Forgetting" (distillation, Hinton et al. 2015's temperature).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def ewc_penalty(params: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor],
                fishers: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_k F_k (theta_k - theta*_k)^2 over every parameter entry k.

    The EWC loss is L_B(theta) + lambda/2 * this (Kirkpatrick et al. 2017, eq. 3). It is zero at the anchor
    theta* and grows quadratically away from it, fastest along the directions the Fisher F marks as important.
    """
    total = params[0].new_zeros(())
    for p, a, f in zip(params, anchors, fishers, strict=True):
        total = total + (f * (p - a).pow(2)).sum()
    return total


def fisher_update(fisher: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], n: int) -> None:
    """Running mean of squared per-example gradients, in place: F <- F + (g^2 - F) / n for the n-th example.

    The diagonal Fisher information F = E_x E_{y ~ p} [(d/dtheta log p(y|x))^2]: with y drawn from the model
    ("sampled" / true Fisher) or y the data label ("empirical" Fisher; Kunstner et al. 2019 on the difference).
    """
    for f, g in zip(fisher, grads, strict=True):
        f.add_((g.detach().pow(2) - f) / n)


def online_fisher(previous: Sequence[torch.Tensor] | None, new: Sequence[torch.Tensor],
                  gamma: float) -> list[torch.Tensor]:
    """Online EWC's running Fisher: F*_t = gamma F*_{t-1} + F_t (Schwarz et al. 2018, eq. 8)."""
    if previous is None:
        return [f.clone() for f in new]
    return [gamma * p + f for p, f in zip(previous, new, strict=True)]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 2.0) -> torch.Tensor:
    """T^2 * KL(softmax(z_old / T) || softmax(z / T)), averaged over rows.

    LwF's knowledge-distillation term (Li & Hoiem 2016, eq. 2, in the KL form of Hinton et al. 2015; the T^2
    keeps its gradient scale independent of T). Zero when student and teacher agree.
    """
    t = temperature
    log_p = F.log_softmax(student_logits.float() / t, dim=-1)
    log_q = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return (t * t) * (log_q.exp() * (log_q - log_p)).sum(-1).mean()
