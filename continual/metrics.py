"""Continual-learning metrics, all derived from one accuracy matrix.

``R[t][i]`` is the score on task ``i`` after training task ``t`` (T x T, rows = training time, columns =
evaluated task). ``b[i]`` is the score on task ``i`` of the model before any training (for FWT).
Definitions follow Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning" (ACC,
BWT, FWT) and Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning" (forgetting).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _matrix(R: Sequence[Sequence[float]]) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"the accuracy matrix must be square T x T with T >= 1, got shape {R.shape}")
    return R


def average_accuracy(R) -> float:
    """ACC = 1/T sum_i R[T-1, i]: mean score over all tasks after the last one."""
    R = _matrix(R)
    return float(R[-1].mean())


def accuracy_curve(R) -> list[float]:
    """a_t = 1/(t+1) sum_{i<=t} R[t, i]: mean score over the tasks seen so far, after each task."""
    R = _matrix(R)
    return [float(R[t, : t + 1].mean()) for t in range(len(R))]


def backward_transfer(R) -> float:
    """BWT = 1/(T-1) sum_{i<T-1} (R[T-1, i] - R[i, i]); negative = forgetting. 0 for T = 1."""
    R = _matrix(R)
    T = len(R)
    if T < 2:
        return 0.0
    return float(np.mean([R[-1, i] - R[i, i] for i in range(T - 1)]))


def forward_transfer(R, b: Sequence[float]) -> float:
    """FWT = 1/(T-1) sum_{i>=1} (R[i-1, i] - b_i): how much training on earlier tasks helps a task
    before it is trained on, against the untrained model's score ``b``. 0 for T = 1."""
    R = _matrix(R)
    b = np.asarray(b, dtype=float)
    T = len(R)
    if b.shape != (T,):
        raise ValueError(f"b must hold one untrained score per task ({T}), got shape {b.shape}")
    if T < 2:
        return 0.0
    return float(np.mean([R[i - 1, i] - b[i] for i in range(1, T)]))


def forgetting(R) -> float:
    """F = 1/(T-1) sum_{i<T-1} max_{l<T-1} (R[l, i] - R[T-1, i]): the mean drop from each old task's best
    score to its final one (Chaudhry et al. 2018). Only rows l >= i count, the ones after task i was learnt."""
    R = _matrix(R)
    T = len(R)
    if T < 2:
        return 0.0
    return float(np.mean([max(R[l, i] for l in range(i, T - 1)) - R[-1, i] for i in range(T - 1)]))


def summarize(R, b: Sequence[float] | None = None) -> dict[str, float]:
    """All of the above under stable names (``cl/acc``, ``cl/bwt``, ``cl/fwt``, ``cl/forgetting``)."""
    out = {"cl/acc": average_accuracy(R), "cl/bwt": backward_transfer(R), "cl/forgetting": forgetting(R)}
    if b is not None:
        out["cl/fwt"] = forward_transfer(R, b)
    return out
