"""CPPO (Zhang et al. 2024, "CPPO: Continual Learning for Reinforcement Learning with Human Feedback", ICLR 2024):
per-sample weights that trade policy learning against knowledge retention.

Objective for task t (a sample x = a prompt and one of its responses y, with reward R(x)):

    J(theta) = E_x[ alpha(x) * L^PG(x) ]  -  c * E_x[ beta(x) * L^KR(x) ]
    L^KR(x)  = ( log P_theta(y|x) - log P_{t-1}(y|x) )^2

with P_{t-1} the policy after the previous task (``knowledge retention``, CPPO's cheap stand-in for a KL to the
old policy; here with per-token mean log-probabilities so that long responses do not dominate) and L^PG the
clipped policy-gradient surrogate (``learners.policy_loss.ppo_clip_loss``) with group-relative advantages.

The weights come from each sample's reward R and generation probability P (under P_{t-1}), measured against
the task's mean mu and standard deviation sigma with a margin k (CPPO's heuristic weighting, sec. 3.2.1):

    category          R                P                alpha   beta
    high-performance  >= mu_R + k s_R  >= mu_P + k s_P  high    high    learnt and worth keeping
    overfitting       <= mu_R - k s_R  >= mu_P + k s_P  high    low     likely but bad: correct it, do not keep it
    high-variance     >= mu_R + k s_R  <= mu_P - k s_P  high    low     good but unlikely: learn it
    noisy             <= mu_R - k s_R  <= mu_P - k s_P  low     low     unlikely and bad: leave it
    normal            otherwise                         1       1

("high" / "low" = ``continual.cppo_high`` / ``continual.cppo_low``; the paper's learnable variant fits the
weights within such bounds by a Lagrangian, the heuristic one sets them to the bounds as here.)
The responses are the stream's graded responses rather than fresh samples: a CPU-sized, deterministic
setting; the weighting and retention terms are the method's, unchanged.
"""
from __future__ import annotations

import torch

from learners.advantages import group_relative
from learners.policy_loss import get_policy_loss, masked_mean

CATEGORIES = ("normal", "high_performance", "overfitting", "high_variance", "noisy")
NORMAL, HIGH_PERFORMANCE, OVERFITTING, HIGH_VARIANCE, NOISY = range(5)


def categorize(rewards: torch.Tensor, gen_logp: torch.Tensor, k: float) -> torch.Tensor:
    """Index into ``CATEGORIES`` per sample from its reward R and generation log-probability P (both [N])."""
    r, p = rewards.double(), gen_logp.double()
    r_hi, r_lo = r >= r.mean() + k * r.std(unbiased=False), r <= r.mean() - k * r.std(unbiased=False)
    p_hi, p_lo = p >= p.mean() + k * p.std(unbiased=False), p <= p.mean() - k * p.std(unbiased=False)
    cat = torch.full(r.shape, NORMAL, dtype=torch.long)
    # With k = 0 a sample can sit on both sides of a mean; the earlier rule wins, as listed in the table above.
    for c, cond in ((NOISY, r_lo & p_lo), (HIGH_VARIANCE, r_hi & p_lo), (OVERFITTING, r_lo & p_hi),
                    (HIGH_PERFORMANCE, r_hi & p_hi)):
        cat = torch.where(cond, torch.full_like(cat, c), cat)
    return cat


def weights(categories: torch.Tensor, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, beta) per sample from its category, by the table in the module docstring."""
    table = torch.tensor([[1.0, 1.0], [high, high], [high, low], [high, low], [low, low]])
    ab = table[categories]
    return ab[:, 0], ab[:, 1]


def knowledge_retention(logp: torch.Tensor, prev_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L^KR per sample: (mean_t log P_theta(y_t|.) - mean_t log P_{t-1}(y_t|.))^2 over its response tokens ([N])."""
    return (masked_mean(logp - prev_logp, mask, dim=-1)) ** 2


def cppo_loss(logp: torch.Tensor, prev_logp: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor,
              group_ids: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, kr_coef: float
              ) -> tuple[torch.Tensor, dict]:
    """-J(theta) for a batch of responses: token log-probs ``logp`` [N, T] (in the graph) and ``prev_logp`` under
    P_{t-1}, response ``mask``, one reward per response, the prompt each belongs to, and the weights.

    The surrogate's pi_old is the policy at this step (one update per batch, as the GRPO learner does with one
    minibatch), so the ratio is 1 and its gradient is -alpha A grad log pi; alpha > 0 scales a sample's
    clipped loss exactly as scaling its advantage does."""
    adv = group_relative(rewards, group_ids)
    pg, metrics = get_policy_loss("ppo_clip")(logp, logp.detach(), (alpha * adv)[:, None].expand_as(logp), mask,
                                              loss_agg="seq-mean-token-mean")
    kr = (beta * knowledge_retention(logp, prev_logp, mask)).mean()
    return pg + kr_coef * kr, {"cppo/pg_loss": pg.item(), "cppo/kr_loss": kr.item(),
                               "cppo/adv_abs_mean": adv.abs().mean().item()}
