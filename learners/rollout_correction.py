"""The rollout/learner mismatch: measured on every batch, and corrected by importance weights.

The engine that samples (vLLM: its own kernels, dtype, maybe an older adapter version under asynchronous
rollout) is not exactly the policy the learner differentiates. Tokens are drawn from the engine's mu, while the
policy-gradient estimator assumes pi_old, the learner's own policy before the update; Yao et al. 2025 ("Your
efficient RL framework secretly brings you off-policy RL training") show that this gap biases the gradient and
correct it with a truncated importance weight per token. Notation: for response token t, ``learner_logp`` =
log pi_old(y_t), ``engine_logp`` = log mu(y_t) (the engine's sampling logprob), rho_t = pi_old(y_t) / mu(y_t).
All tensors [B, T]; ``mask`` is 1 on response tokens. Pure torch, no gradient flows through any of it.
"""
from __future__ import annotations

import math

import torch

CORRECTIONS = ("none", "tis", "mis")


def is_ratio(learner_logp: torch.Tensor, engine_logp: torch.Tensor) -> torch.Tensor:
    """rho_t = exp(log pi_old(y_t) - log mu(y_t)), detached (log-ratio clamped to +-20 so exp stays finite)."""
    return torch.exp((learner_logp.detach() - engine_logp.detach()).clamp(-20.0, 20.0))


def truncated_is_weights(learner_logp: torch.Tensor, engine_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """TIS (Yao et al. 2025): w_t = min(rho_t, C). The policy-gradient term of token t is multiplied by w_t;
    truncation at C bounds the variance at the price of a small bias (Ionides 2008)."""
    return is_ratio(learner_logp, engine_logp).clamp(max=cap)


def masked_is_weights(learner_logp: torch.Tensor, engine_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """MIS, masked importance sampling (token-level rejection): w_t = rho_t * 1[rho_t <= C]. A token the engine
    drew far more often than the learner would (rho_t > C) is dropped from the policy gradient instead of being
    down-weighted to C, so no single mismatched token steers the update."""
    rho = is_ratio(learner_logp, engine_logp)
    return torch.where(rho <= cap, rho, torch.zeros_like(rho))


def correction_weights(mode: str, learner_logp: torch.Tensor, engine_logp: torch.Tensor, cap: float) -> torch.Tensor | None:
    """The per-token weights of ``mode`` (none | tis | mis); None for none."""
    if mode == "none":
        return None
    if mode == "tis":
        return truncated_is_weights(learner_logp, engine_logp, cap)
    if mode == "mis":
        return masked_is_weights(learner_logp, engine_logp, cap)
    raise ValueError(f"unknown rollout correction {mode!r}; choose one of {CORRECTIONS}")


def mismatch_metrics(learner_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor, cap: float) -> dict:
    """How far the engine's sampling distribution is from the learner's on the sampled tokens:

        kl        = mean_t k3(mu || pi_old) = mean_t [ rho_t - 1 - log rho_t ]   (>= 0; Schulman's k3 from mu's samples)
        k1        = mean_t [ log mu(y_t) - log pi_old(y_t) ]
        max_abs   = max_t |log pi_old(y_t) - log mu(y_t)|
        frac_over = share of tokens with rho_t outside [1/C, C]  (those TIS truncates or MIS drops, when above)

    Means are over response tokens (``mask``). Returns floats keyed ``rollout_corr/...``.
    """
    m = mask.to(torch.float64)
    n = m.sum().clamp(min=1.0)
    log_rho = (learner_logp.detach() - engine_logp.detach()).to(torch.float64).clamp(-20.0, 20.0)
    k3 = torch.exp(log_rho) - 1.0 - log_rho
    over = (log_rho.abs() > math.log(cap)).to(torch.float64)
    on = m > 0
    return {"rollout_corr/kl": float((k3 * m).sum() / n), "rollout_corr/k1": float((-log_rho * m).sum() / n),
            "rollout_corr/max_abs_diff": float(log_rho.abs()[on].max()) if bool(on.any()) else 0.0,
            "rollout_corr/frac_over": float((over * m).sum() / n)}
