"""The DPO family: preference losses on log-ratios to a reference policy, pure torch, selected by name.

Notation (Rafailov et al. 2023, "Direct Preference Optimization"): for a prompt x with a preferred
response y_w ("chosen") and a dispreferred one y_l ("rejected"),

    h = [log pi_theta(y_w|x) - log pi_ref(y_w|x)] - [log pi_theta(y_l|x) - log pi_ref(y_l|x)]

is the difference of log-ratios, and r(x, y) = beta * (log pi_theta(y|x) - log pi_ref(y|x)) the implicit
reward. Every loss below is a function of h (a [B] tensor) and beta; it returns the per-pair loss [B].
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

DPO_LOSSES: dict[str, Callable[..., torch.Tensor]] = {}
# Losses whose log-ratios are per-token averages rather than sums: IPO's target 1/(2 beta) is a constant,
# so a summed log-ratio would make the loss scale with completion length (TRL and the IPO authors
# average over completion tokens too).
LENGTH_NORMALISED = {"ipo"}


def register_dpo_loss(name: str):
    def deco(fn):
        DPO_LOSSES[name] = fn
        return fn
    return deco


def get_dpo_loss(name: str) -> Callable[..., torch.Tensor]:
    if name not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss {name!r}; choose one of {sorted(DPO_LOSSES)}")
    return DPO_LOSSES[name]


def completion_logps(token_logps: torch.Tensor, completion_mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """log pi(y|x) = sum_t log pi(y_t | x, y_<t) over completion tokens ([B, T] -> [B]); with ``average`` the
    per-token mean instead (used by length-normalised losses such as IPO)."""
    mask = completion_mask.to(token_logps.dtype)
    total = (token_logps * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1.0) if average else total


def logratio_difference(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                        ref_chosen: torch.Tensor, ref_rejected: torch.Tensor) -> torch.Tensor:
    """h = (log pi_theta(y_w|x) - log pi_ref(y_w|x)) - (log pi_theta(y_l|x) - log pi_ref(y_l|x))."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


@register_dpo_loss("sigmoid")
def sigmoid_loss(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO: L = -log sigma(beta * h)  (Rafailov et al. 2023, eq. 7: the Bradley-Terry likelihood of the
    preference under the implicit reward)."""
    return -F.logsigmoid(beta * h)


@register_dpo_loss("ipo")
def ipo_loss(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """IPO: L = (h - 1/(2 tau))^2 with tau = beta  (Azar et al. 2023, "A General Theoretical Paradigm to
    Understand Learning from Human Preferences", eq. 17). A squared loss that regresses h to a finite
    target, so it does not push deterministic preferences to infinity as DPO can. Pass per-token averaged
    log-probs (see ``LENGTH_NORMALISED``)."""
    return (h - 1.0 / (2.0 * beta)) ** 2


@register_dpo_loss("hinge")
def hinge_loss(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinge (SLiC-HF with a reference): L = max(0, 1 - beta * h)  (Zhao et al. 2023, "SLiC-HF"; the
    reference-normalised form of Liu et al. 2024, "Statistical Rejection Sampling", eq. 9). Pairs already
    separated by a margin of 1/beta stop contributing."""
    return torch.relu(1.0 - beta * h)


@register_dpo_loss("cdpo")
def cdpo_loss(h: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Conservative DPO (label-smoothed): L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)
    (Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO"). The preference label is
    taken to be flipped with probability eps; the optimum is a finite h* = log((1-eps)/eps) / beta.
    eps = 0 is plain DPO."""
    return -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def pair_losses(name: str, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                ref_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0,
                chosen_len: torch.Tensor | None = None, rejected_len: torch.Tensor | None = None) -> torch.Tensor:
    """The per-pair loss ``name`` [B] from [B] sequence log-probs: L(h, beta) with

        h = (log pi_theta(y_w|x) - log pi_ref(y_w|x)) / n_w - (log pi_theta(y_l|x) - log pi_ref(y_l|x)) / n_l

    where n_w, n_l are the completions' token counts (``chosen_len``, ``rejected_len``, at least 1) for a loss in
    ``LENGTH_NORMALISED`` when they are given -- per-token means, as IPO is defined -- and 1 otherwise (sums).
    Per pair, so that a learner splitting a batch into micro-batches can weight each by its share of the batch."""
    if name in LENGTH_NORMALISED and chosen_len is not None and rejected_len is not None:
        n_w, n_l = chosen_len.clamp(min=1), rejected_len.clamp(min=1)
        policy_chosen, ref_chosen = policy_chosen / n_w, ref_chosen / n_w
        policy_rejected, ref_rejected = policy_rejected / n_l, ref_rejected / n_l
    h = logratio_difference(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return get_dpo_loss(name)(h, beta, label_smoothing)


def dpo_loss(name: str, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Mean loss ``name`` over the batch of pairs, (1/B) sum_i L(h_i, beta), and the metrics TRL users know
    (``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``; implicit rewards
    beta * log-ratio).

    All inputs are [B] sequence log-probs (sums, or per-token means for losses in ``LENGTH_NORMALISED``).
    """
    loss = pair_losses(name, policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing).mean()
    return loss, preference_metrics(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)


@torch.no_grad()
def preference_metrics(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                       ref_rejected: torch.Tensor, beta: float) -> dict[str, float]:
    """Implicit rewards r = beta (log pi_theta - log pi_ref) of both responses, their margin, the share of pairs
    the implicit reward orders correctly, and the share the policy alone prefers (log pi_theta(y_w) >
    log pi_theta(y_l)), which unlike the implicit reward is informative at step 0 too."""
    r_c = beta * (policy_chosen - ref_chosen).float()
    r_r = beta * (policy_rejected - ref_rejected).float()
    return {
        "rewards/chosen": r_c.mean().item(),
        "rewards/rejected": r_r.mean().item(),
        "rewards/margins": (r_c - r_r).mean().item(),
        "rewards/accuracies": (r_c > r_r).float().mean().item(),
        "logps/chosen": policy_chosen.float().mean().item(),
        "logps/rejected": policy_rejected.float().mean().item(),
        "logps/accuracy": (policy_chosen > policy_rejected).float().mean().item(),
    }
