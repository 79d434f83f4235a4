"""Policy-gradient losses, KL estimators and loss aggregation: pure torch, selected by name.

Notation: for response token t of sequence i, ``logp`` = log pi_theta(o_t | q, o_<t), ``old_logp`` the
same under the sampling policy pi_old, ``ref_logp`` under the reference policy, ``adv`` the advantage
A_{i,t}, ``mask`` 1 on response tokens. All are [B, T].

A registered policy loss is ``fn(logp, old_logp, adv, mask, *, <hyperparameters>) -> (loss, metrics)``; its
keyword-only parameters come from the resolved algorithm config by name (learners/algorithms.py
``hyperparameters``): the AlgoConfig field of that name (``clip_low``, ``clip_high``, ``dual_clip``, ``loss_agg``,
``norm_len``) or ``algo.params[name]``. A loss declares only what it reads.
"""
from __future__ import annotations

from typing import Callable

import torch

POLICY_LOSSES: dict[str, Callable] = {}


def register_policy_loss(name: str):
    def deco(fn):
        POLICY_LOSSES[name] = fn
        return fn
    return deco


def get_policy_loss(name: str) -> Callable:
    if name not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {name!r}; choose one of {sorted(POLICY_LOSSES)}")
    return POLICY_LOSSES[name]


AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
              norm_len: float | None = None) -> torch.Tensor:
    """Reduce a [B, T] per-token loss to a scalar.

    - ``token-mean``: sum_{i,t} l_{i,t} / sum_{i,t} m_{i,t} (DAPO's token-level loss; long answers weigh more)
    - ``seq-mean-token-mean``: (1/B) sum_i [ sum_t l_{i,t} / |o_i| ] (GRPO as published)
    - ``seq-mean-token-sum-norm``: (1/B) sum_i [ sum_t l_{i,t} / L ] with a constant L (Dr.GRPO, TRL's
      ``dr_grpo`` with L = max_completion_length; the learner passes ``algo.norm_len``, by default
      rollout.max_new_tokens; without it L is T, the padded length)
    """
    mask = mask.to(loss_mat.dtype)
    if mode == "token-mean":
        return (loss_mat * mask).sum() / mask.sum().clamp(min=1.0)
    if mode == "seq-mean-token-mean":
        per_seq = (loss_mat * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.mean()
    if mode == "seq-mean-token-sum-norm":
        L = float(norm_len or loss_mat.shape[-1])
        return ((loss_mat * mask).sum(-1) / L).mean()
    raise ValueError(f"unknown loss aggregation {mode!r}; choose token-mean, seq-mean-token-mean or seq-mean-token-sum-norm")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta (Schulman, "Approximating KL
    Divergence", 2020), with log r = ref_logp - logp:

        k1 = -log r            (unbiased, high variance, can be negative)
        k2 = (log r)^2 / 2     (biased, low variance)
        k3 = (r - 1) - log r   (unbiased, low variance, always >= 0; GRPO's choice)
    """
    log_ratio = ref_logp - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio ** 2
    if estimator == "k3":
        log_ratio = log_ratio.clamp(-20.0, 20.0)  # keeps exp finite on wild tokens
        return torch.exp(log_ratio) - 1.0 - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; choose k1, k2 or k3")


def _clip_metrics(ratio, adv, mask, clip_low, clip_high, log_ratio) -> dict:
    """Share of tokens whose ratio is clipped below (A < 0) or above (A > 0), and k2 approx KL to pi_old."""
    with torch.no_grad():
        low = ((ratio < 1.0 - clip_low) & (adv < 0)).float()
        high = ((ratio > 1.0 + clip_high) & (adv > 0)).float()
        return {"clipfrac": masked_mean(low + high, mask).item(), "clipfrac_low": masked_mean(low, mask).item(),
                "clipfrac_high": masked_mean(high, mask).item(),
                "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask).item()}


def _clipped_surrogate(ratio, adv, clip_low, clip_high, dual_clip):
    """l = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A), then dual clip for A < 0."""
    loss_mat = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high))
    if dual_clip and dual_clip > 1.0:
        loss_mat = torch.where(adv < 0, torch.minimum(loss_mat, -adv * dual_clip), loss_mat)
    return loss_mat


@register_policy_loss("ppo_clip")
def ppo_clip_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *,
                  clip_low: float = 0.2, clip_high: float = 0.2, dual_clip: float = 0.0,
                  loss_agg: str = "token-mean", norm_len: float | None = None) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate (Schulman et al. 2017, PPO), per token, as GRPO uses it:

        rho_t = exp(logp_t - old_logp_t)
        l_t   = -min(rho_t * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t)

    ``clip_high > clip_low`` is DAPO's clip-higher (Yu et al. 2025). With ``dual_clip = c > 1``, for
    A_t < 0 the loss is further bounded: l_t = min(l_t, -c * A_t) (Ye et al. 2020, dual-clip PPO).
    Returns (loss, metrics) with clip fractions and approximate KL to pi_old.
    """
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    loss_mat = _clipped_surrogate(ratio, adv, clip_low, clip_high, dual_clip)
    loss = aggregate(loss_mat, mask, loss_agg, norm_len)
    return loss, _clip_metrics(ratio, adv, mask, clip_low, clip_high, log_ratio)


@register_policy_loss("gspo")
def gspo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *,
              clip_low: float = 3e-4, clip_high: float = 4e-4, dual_clip: float = 0.0,
              loss_agg: str = "seq-mean-token-mean", norm_len: float | None = None) -> tuple[torch.Tensor, dict]:
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): one importance ratio per sequence,
    the length-normalised likelihood ratio, clipped at the sequence level:

        s_i = (pi_theta(o_i | q) / pi_old(o_i | q))^(1/|o_i|) = exp( (1/|o_i|) sum_t (logp_t - old_logp_t) )
        l_i = -min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)

    s_i is broadcast over the tokens of o_i, so with ``loss_agg='seq-mean-token-mean'`` the loss is
    (1/G) sum_i l_i, the paper's objective (TRL's importance_sampling_level='sequence'). The paper's clip
    range is tiny (3e-4, 4e-4) because s_i averages the per-token log-ratios.
    """
    m = mask.to(logp.dtype)
    seq_log_ratio = ((logp - old_logp) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1.0)
    seq_log_ratio = seq_log_ratio.clamp(-20.0, 20.0)
    ratio = torch.exp(seq_log_ratio).expand_as(logp)
    loss_mat = _clipped_surrogate(ratio, adv, clip_low, clip_high, dual_clip)
    loss = aggregate(loss_mat, mask, loss_agg, norm_len)
    metrics = _clip_metrics(ratio, adv, mask, clip_low, clip_high, (logp - old_logp).clamp(-20.0, 20.0))
    return loss, metrics


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H(pi(.|s_t)) = -sum_v p_v log p_v for each position: [B, T, V] -> [B, T]."""
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return -(logp.exp() * logp).sum(-1)
