"""Advantage estimators, each a pure function over tensors, selected by name (``ADV_ESTIMATORS``).

Shapes: ``rewards`` [B] are sequence-level scores; ``group_ids`` [B] say which prompt each sample
answers (samples of one prompt form a group); token-level inputs are [B, T] with a 0/1 ``mask``.
A sequence-level advantage is broadcast over the response tokens by the caller.
"""
from __future__ import annotations

from typing import Callable

import torch

ADV_ESTIMATORS: dict[str, Callable] = {}


def register_adv_est(name: str):
    def deco(fn):
        ADV_ESTIMATORS[name] = fn
        return fn
    return deco


def get_adv_estimator(name: str) -> Callable:
    if name not in ADV_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; choose one of {sorted(ADV_ESTIMATORS)}")
    return ADV_ESTIMATORS[name]


def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor):
    """Per-sample mean, std (unbiased, as in GRPO) and size of the sample's group."""
    uniq, inv = torch.unique(group_ids, return_inverse=True)
    g = len(uniq)
    r = rewards.to(torch.float64)
    count = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, torch.ones_like(r))
    total = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, r)
    mean = total / count
    sq = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, (r - mean[inv]) ** 2)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    return mean[inv], std[inv], count[inv]


@register_adv_est("grpo")
def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, norm_by_std: bool = True,
                    eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantage (Shao et al. 2024, DeepSeekMath, GRPO):

        A_i = (r_i - mean(r_group)) / (std(r_group) + eps)

    With ``norm_by_std=False`` it is Dr.GRPO's A_i = r_i - mean(r_group) (Liu et al. 2025,
    "Understanding R1-Zero-Like Training"). A group whose rewards are all equal gets A = 0.
    """
    mean, std, _ = _group_stats(rewards, group_ids)
    adv = rewards.to(torch.float64) - mean
    if norm_by_std:
        adv = adv / (std + eps)
    return adv.to(rewards.dtype)


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), vectorised over the batch:

        delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t
        A_t     = delta_t + gamma * lam * m_{t+1} * A_{t+1}
        returns = A + V

    ``rewards``, ``values``, ``mask`` are [B, T]; positions with mask 0 are padding (or, for
    environments, steps after an episode ended) and stop the recursion. Returns (advantages, returns),
    zero where mask is 0.
    """
    B, T = rewards.shape
    adv = torch.zeros_like(rewards, dtype=torch.float32)
    last = torch.zeros(B, dtype=torch.float32, device=rewards.device)
    m = mask.to(torch.float32)
    r = rewards.to(torch.float32)
    v = values.to(torch.float32) * m
    for t in reversed(range(T)):
        next_v = v[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        next_m = m[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = r[:, t] + gamma * next_v * next_m - v[:, t]
        last = (delta + gamma * lam * next_m * last) * m[:, t]
        adv[:, t] = last
    return adv, (adv + v) * m
