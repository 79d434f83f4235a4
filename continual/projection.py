"""Gradient projections that never increase the loss on remembered examples (to first order).

GEM: Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning".
A-GEM: Chaudhry et al. 2019, "Efficient Lifelong Learning with A-GEM".
"""
from __future__ import annotations

import numpy as np
import torch


def gem_project(g: torch.Tensor, G: torch.Tensor, margin: float = 0.0, eps: float = 1e-8) -> torch.Tensor:
    """The gradient g~ closest to g with <g~, g_k> >= 0 for every memory gradient g_k (rows of G).

    Primal: min_z 1/2 ||g - z||^2 s.t. G z >= 0. GEM solves its dual (Lopez-Paz & Ranzato 2017, eq. 11-12),
    a QP in one variable per task:  min_v 1/2 v^T G G^T v + g^T G^T v  s.t. v >= margin,  then g~ = G^T v + g.
    ``margin`` > 0 (the paper's "memory strength") pushes g~ further into the feasible cone. ``eps`` (relative
    to the mean of diag(G G^T)) keeps the QP strictly convex when memory gradients are collinear; the KKT
    conditions give G g~ >= -eps v, so it stays far below any gradient's scale. Solved with the ``quadprog``
    library (Goldfarb-Idnani dual active set). Returns g itself if no constraint is violated.
    """
    import quadprog

    if G.ndim != 2 or G.shape[1] != g.numel():
        raise ValueError(f"G must be [tasks, {g.numel()}], got {tuple(G.shape)}")
    if bool((G @ g >= 0).all()):
        return g
    Gn = G.double().cpu().numpy()
    gn = g.double().cpu().numpy()
    P = Gn @ Gn.T
    P = 0.5 * (P + P.T)
    P = P + eps * max(float(np.mean(np.diag(P))), 1e-30) * np.eye(len(P))
    q = -(Gn @ gn)  # quadprog minimises 1/2 v^T P v - q^T v
    C = np.eye(len(P))  # constraints C^T v >= b, i.e. v >= margin
    b = np.full(len(P), margin)
    v = quadprog.solve_qp(P, q, C, b)[0]
    return torch.as_tensor(v @ Gn + gn, dtype=g.dtype, device=g.device)


def agem_project(g: torch.Tensor, g_ref: torch.Tensor) -> torch.Tensor:
    """g~ = g - (g.g_ref / g_ref.g_ref) g_ref if g.g_ref < 0, else g (Chaudhry et al. 2019, eq. 11).

    One constraint, on the gradient of a random memory batch, so the projection has a closed form."""
    dot = torch.dot(g, g_ref)
    if dot >= 0:
        return g
    return g - dot / torch.dot(g_ref, g_ref).clamp_min(1e-12) * g_ref
