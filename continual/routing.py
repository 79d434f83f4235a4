"""Routing an input to per-task experts (adapters) without knowing its task.

Each task leaves a few keys: k-means centroids of its inputs' features under the frozen base model. An input
goes to the tasks whose keys are nearest -- the prototype routing of mixture-of-adapter continual learners
(e.g. Wang et al. 2023, "Rehearsal-free Continual Language Learning via Efficient Parameter Isolation").
"""
from __future__ import annotations

from typing import Sequence

import torch


def fit_keys(features: torch.Tensor, n_keys: int, seed: int = 0) -> torch.Tensor:
    """``n_keys`` k-means centroids of a task's [n, d] features (scikit-learn's KMeans)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    k = max(1, min(n_keys, len(features)))
    with threadpool_limits(1):  # OpenMP threads spin on a busy machine; a few hundred points need one
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(features.detach().double().cpu().numpy())
    return torch.as_tensor(km.cluster_centers_, dtype=features.dtype)


def task_distances(features: torch.Tensor, keys: Sequence[torch.Tensor]) -> torch.Tensor:
    """d[b, k] = min_j || x_b - key_{k, j} ||: distance of each input to each task's nearest key ([B, K])."""
    return torch.stack([torch.cdist(features, K.to(features)).min(dim=1).values for K in keys], dim=1)


def router_weights(distances: torch.Tensor, top_k: int = 1, temperature: float = 1.0) -> torch.Tensor:
    """w[b, k] = softmax_k(-d[b, k] / T) over each row's ``top_k`` nearest tasks, 0 for the others.

    ``top_k=1`` is hard routing (one adapter per input); larger ``top_k`` mixes the experts' predictions."""
    top_k = max(1, min(top_k, distances.shape[1]))
    idx = distances.topk(top_k, dim=1, largest=False).indices
    logits = torch.full_like(distances, float("-inf"))
    logits.scatter_(1, idx, -distances.gather(1, idx) / temperature)
    return torch.softmax(logits, dim=1)
