"""Exemplar selection and the nearest-mean-of-exemplars classifier of iCaRL.

Rebuffi et al. 2017, "iCaRL: Incremental Classifier and Representation Learning" (algorithms 1 and 4);
herding after Welling 2009, "Herding dynamical weights to learn".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def herding(features: torch.Tensor, m: int) -> list[int]:
    """Indices of m exemplars, in order, whose running mean tracks the class mean mu:

    p_k = argmin_x || mu - 1/k (phi(x) + sum_{j<k} phi(p_j)) ||   (iCaRL, algorithm 4), without repeats.

    ``features`` are [n, d], L2-normalised as in the paper. Any prefix of the result is itself a herding
    selection, so shrinking a class's memory keeps its first exemplars.
    """
    n = len(features)
    m = min(m, n)
    mu = features.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(n, dtype=torch.bool)
    for k in range(1, m + 1):
        dist = (mu - (running + features) / k).norm(dim=1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        running = running + features[i]
    return chosen


def normalize(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features, dim=-1)


def nearest_mean_scores(features: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """-|| phi(x) - mu_y ||  for every class y ([B, C]): argmax is iCaRL's nearest-mean-of-exemplars rule
    (algorithm 1). ``features`` and ``means`` are L2-normalised; rows of ``means`` for classes without
    exemplars should be NaN and score lowest."""
    d = torch.cdist(features, torch.nan_to_num(means, nan=0.0))
    d[:, torch.isnan(means).any(1)] = float("inf")
    return -d
