"""COPR (Zhang et al. 2025, "COPR: Continual Human Preference Learning via Optimal Policy Regularization",
Findings of ACL 2025): fit the policy to the optimal policy's distribution over sampled responses, with a
Lagrangian constraint that keeps the old tasks' fit.

The KL-regularised RLHF objective has the optimal policy pi*(y|x) = pi_ref(y|x) exp(r(x,y)/beta) / Z(x).
Over the J responses y_1..y_J sampled for a prompt x it gives the sampling distribution

    P*(y_j|x) = pi_ref(y_j|x) exp(r(x,y_j)/beta) / sum_k pi_ref(y_k|x) exp(r(x,y_k)/beta)

(Z(x) cancels: the target is computable), and the policy's own distribution over the same responses is
P_theta(y_j|x) = pi_theta(y_j|x) / sum_k pi_theta(y_k|x). Here log pi(y|x) is the per-token mean log-probability
(length-normalised, as RRHF and SimPO score responses): with sums, a 4-token answer outweighs a 20-token one by
tens of nats, P* and P_theta are both one-hot on the shortest response, and the fit has nothing to learn. The
fitting loss of a task is

    L(theta) = E_x[ KL( P*(.|x) || P_theta(.|x) ) ]

and continual learning adds the historical optimal policies as constraints: while learning task t,
L_i(theta) <= epsilon for the replayed prompts of every earlier task i (their targets P*_i use their own
rewards). The Lagrangian min_theta max_{lambda >= 0} L_t + lambda (L_old - epsilon) is solved by gradient steps
on theta and dual ascent on lambda: lambda <- max(0, lambda + eta (L_old - epsilon)), so the constraint
weighs more exactly when old preferences start to slip.

Rewards: a row's ``scores`` when it has them; a plain pair has the rank rewards (1, 0) -- COPR's "moderate
reward" derived from the ranking, up to an affine map that beta absorbs.
"""
from __future__ import annotations

import torch


def group_log_softmax(x: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """log softmax of ``x`` [N] within each group of equal ``group_ids`` [N] (the groups need not be sorted)."""
    uniq, inv = torch.unique(group_ids, return_inverse=True)
    xf = x.float()
    gmax = torch.full((len(uniq),), float("-inf"), dtype=xf.dtype).scatter_reduce(0, inv, xf.detach(), "amax")
    shifted = xf - gmax[inv]
    denom = torch.zeros(len(uniq), dtype=xf.dtype).index_add(0, inv, shifted.exp())
    return shifted - denom.log()[inv]


def optimal_target(ref_logps: torch.Tensor, rewards: torch.Tensor, group_ids: torch.Tensor, beta: float) -> torch.Tensor:
    """log P*(y_j|x) = log softmax_j( log pi_ref(y_j|x) + r_j / beta ) within each prompt's responses ([N])."""
    return group_log_softmax(ref_logps.float() + rewards.float() / beta, group_ids)


def fit_loss(logps: torch.Tensor, target_logp: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Mean over prompts of KL(P* || P_theta) = sum_j P*_j (log P*_j - log P_theta,j), from the responses'
    log pi_theta(y_j|x) [N] (in the graph) and the target log P* [N]."""
    uniq, inv = torch.unique(group_ids, return_inverse=True)
    log_p = group_log_softmax(logps, group_ids)
    kl_terms = target_logp.exp() * (target_logp - log_p)
    per_prompt = torch.zeros(len(uniq), dtype=kl_terms.dtype).index_add(0, inv, kl_terms)
    return per_prompt.mean()


def dual_update(lam: float, constraint: float, epsilon: float, lr: float) -> float:
    """lambda <- max(0, lambda + lr * (L_old - epsilon)): projected dual ascent on the multiplier."""
    return max(0.0, lam + lr * (constraint - epsilon))


def copr_loss(logps: torch.Tensor, target_logp: torch.Tensor, group_ids: torch.Tensor, is_old: torch.Tensor,
              lam: float, epsilon: float) -> tuple[torch.Tensor, float | None, dict]:
    """The Lagrangian L_new + lambda (L_old - epsilon) on a batch mixing new-task prompts and replayed old ones
    (``is_old`` per response). Returns (loss, L_old or None when the batch has no old prompt, metrics)."""
    new, old = ~is_old, is_old
    loss = logps.new_zeros(())
    metrics = {}
    if new.any():
        l_new = fit_loss(logps[new], target_logp[new], group_ids[new])
        loss = loss + l_new
        metrics["copr/fit_new"] = l_new.item()
    l_old = None
    if old.any():
        term = fit_loss(logps[old], target_logp[old], group_ids[old])
        loss = loss + lam * (term - epsilon)
        l_old = term.item()
        metrics["copr/fit_old"] = l_old
    metrics["copr/lambda"] = lam
    return loss, l_old, metrics
