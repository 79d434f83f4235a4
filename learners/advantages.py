"""Advantage estimators, each a pure function over tensors, selected by name (``ADV_ESTIMATORS``).

Every registered estimator has one signature (the veRL way, so that an algorithm is a name in the config):

    fn(token_rewards [B, T], mask [B, T], group_ids [B], values [B, T] | None, *, <hyperparameters>)
        -> (advantages [B, T], returns [B, T] | None)

``token_rewards`` holds the sequence score on each response's last token plus, when the KL is a reward
penalty, -beta * KL_t on every token (:func:`outcome_token_rewards`); ``mask`` is 1 on response tokens;
``group_ids`` say which prompt each sample answers (the samples of one prompt form a group). Outcome
estimators (GRPO, Dr.GRPO, RLOO) use the sequence total R_i = sum_t r_{i,t}; token estimators (GAE,
REINFORCE++) use the per-token rewards. ``returns`` are the critic's regression targets (GAE only).

The keyword-only parameters are the estimator's hyperparameters and come from the resolved algorithm config by
name (learners/algorithms.py ``hyperparameters``): an AlgoConfig field of that name (``gamma``, ``lam``,
``norm_adv_by_std``) or ``algo.params[name]`` (``eps``); ``reduce`` (a sum over data-parallel learners) is the
learner's. An estimator declares only what it reads.
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


# ------------------------------------------------------------------------------------------ building blocks

def outcome_token_rewards(scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None,
                          kl_coef: float = 0.0) -> torch.Tensor:
    """Per-token rewards of an outcome-scored response (Ziegler et al. 2019; Ouyang et al. 2022, InstructGPT):

        r_t = -beta * KL_t + [t = last response token] * R(x, y)

    ``scores`` [B]; ``kl`` [B, T] a per-token KL estimate (or None for no penalty). Zero off the mask. A row with
    no response token gets no reward at all (there is nothing to credit).
    """
    m = mask.to(torch.float32)
    r = torch.zeros_like(m)
    if kl is not None and kl_coef:
        r = r - kl_coef * kl.to(torch.float32) * m
    pos = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m > 0, pos, torch.full_like(pos, -1)).max(dim=1).values  # index of the last response token
    has = last >= 0
    r[has, last[has]] += scores.to(torch.float32)[has]
    return r


def sequence_scores(token_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """R_i = sum_t m_{i,t} r_{i,t}: the outcome score including any per-token KL penalty (as TRL's RLOO does)."""
    return (token_rewards * mask.to(token_rewards.dtype)).sum(-1)


def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor):
    """Per-sample mean, std (unbiased, as in GRPO), size and sum of the sample's group, in float64."""
    uniq, inv = torch.unique(group_ids, return_inverse=True)
    g = len(uniq)
    r = rewards.to(torch.float64)
    count = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, torch.ones_like(r))
    total = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, r)
    mean = total / count
    sq = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, (r - mean[inv]) ** 2)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    return mean[inv], std[inv], count[inv], total[inv]


def group_relative(scores: torch.Tensor, group_ids: torch.Tensor, norm_by_std: bool = True,
                   eps: float = 1e-6) -> torch.Tensor:
    """Sequence-level group-relative advantage [B] (Shao et al. 2024, DeepSeekMath, GRPO):

        A_i = (R_i - mean(R_group)) / (std(R_group) + eps)        (norm_by_std, GRPO)
        A_i =  R_i - mean(R_group)                                (Dr.GRPO: Liu et al. 2025)

    A group whose rewards are all equal gets A = 0.
    """
    mean, std, _, _ = _group_stats(scores, group_ids)
    adv = scores.to(torch.float64) - mean
    if norm_by_std:
        adv = adv / (std + eps)
    return adv.to(torch.float32)


def leave_one_out(scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free"; Ahmadian et al. 2024):

        A_i = R_i - 1/(G-1) sum_{j != i} R_j  =  G/(G-1) (R_i - mean(R_group))

    A group of one sample has no baseline and gets A = 0.
    """
    _, _, count, total = _group_stats(scores, group_ids)
    r = scores.to(torch.float64)
    adv = torch.where(count > 1, r - (total - r) / (count - 1).clamp(min=1), torch.zeros_like(r))
    return adv.to(torch.float32)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  reduce=None) -> torch.Tensor:
    """(x - mu) / sqrt(var + eps) with mu, var (unbiased) over the masked entries of the whole batch; zero off
    the mask. With ``shift_mean=False`` the mean is added back (scale only).

    ``reduce`` (a sum over data-parallel learners, each holding a shard) makes mu and var the global batch's:
    mu = sum_r S_r / sum_r N_r, var = sum_r sum_t m (x - mu)^2 / (sum_r N_r - 1)."""
    reduce = reduce or (lambda t: t)
    m = mask.to(torch.float64)
    xd = x.to(torch.float64)
    n = reduce(m.sum())
    mu = reduce((xd * m).sum()) / n.clamp(min=1)
    var = reduce((((xd - mu) ** 2) * m).sum()) / (n - 1).clamp(min=1)
    out = (xd - mu) / torch.sqrt(var + eps)
    if not shift_mean:
        out = out + mu
    return (out * m).to(x.dtype)


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), vectorised over the batch:

        delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t
        A_t     = delta_t + gamma * lam * m_{t+1} * A_{t+1}
        returns = A + V

    ``rewards``, ``values``, ``mask`` are [B, T]; positions with mask 0 are padding (or, for
    environments, steps after an episode ended) and stop the recursion. Returns (advantages, returns),
    zero where mask is 0. The recursion over t is inherently sequential; the batch is not.

    Holes -- mask 0 between masked-in positions, as the tool results inside a multi-turn trajectory -- are
    skipped, not stops: t + 1 is the next position with mask 1 (the model's next token), so the outcome reward at
    the last turn reaches every earlier turn (the sequence is compacted to its masked-in positions, the recursion
    runs there, and the result is put back).
    """
    m = mask.to(torch.float32)
    on = (m > 0).to(torch.int64)
    if bool(((on.cumsum(1) > 0) & (on.flip(1).cumsum(1).flip(1) > 0) & (on == 0)).any()):  # holes: compact, recurse
        order = torch.sort((m <= 0).to(torch.int8), dim=1, stable=True).indices  # masked-in positions first, in order
        pick = lambda x: torch.gather(x.to(torch.float32), 1, order)  # noqa: E731
        adv_c, ret_c = gae_advantages(pick(rewards), pick(values), pick(m), gamma=gamma, lam=lam)
        adv, ret = torch.zeros_like(adv_c), torch.zeros_like(ret_c)
        return adv.scatter_(1, order, adv_c), ret.scatter_(1, order, ret_c)
    B, T = rewards.shape
    adv = torch.zeros_like(rewards, dtype=torch.float32)
    last = torch.zeros(B, dtype=torch.float32, device=rewards.device)
    r = rewards.to(torch.float32)
    v = values.to(torch.float32) * m
    for t in reversed(range(T)):
        next_v = v[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        next_m = m[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = r[:, t] + gamma * next_v * next_m - v[:, t]
        last = (delta + gamma * lam * next_m * last) * m[:, t]
        adv[:, t] = last
    return adv, (adv + v) * m


def discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = sum_{s >= t} gamma^(s-t) r_s within each response: GAE with V = 0 and lambda = 1."""
    return gae_advantages(token_rewards, torch.zeros_like(token_rewards), mask, gamma=gamma, lam=1.0)[0]


def zero_variance_groups(rewards: torch.Tensor, group_ids: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    """[B] bool: True where the sample's group has all-equal rewards. Such a group gives every group-relative
    estimator A = 0, so it carries no policy gradient (DAPO's dynamic sampling drops them; Yu et al. 2025)."""
    r = rewards.to(torch.float64)
    uniq, inv = torch.unique(group_ids, return_inverse=True)
    hi = torch.full((len(uniq),), -torch.inf, dtype=torch.float64).scatter_reduce(0, inv, r, "amax")
    lo = torch.full((len(uniq),), torch.inf, dtype=torch.float64).scatter_reduce(0, inv, r, "amin")
    return (hi - lo)[inv] <= tol


# ------------------------------------------------------------------------------------ registered estimators

def _broadcast(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return adv[:, None].to(torch.float32) * mask.to(torch.float32)


@register_adv_est("grpo")
def grpo_advantages(token_rewards, mask, group_ids, values=None, *, norm_adv_by_std: bool = True,
                    eps: float = 1e-6) -> tuple[torch.Tensor, None]:
    """GRPO (Shao et al. 2024): A_{i,t} = (R_i - mean(R_group)) / (std(R_group) + eps) on every token of o_i.
    With ``norm_adv_by_std=False`` it is Dr.GRPO's A_{i,t} = R_i - mean(R_group)."""
    return _broadcast(group_relative(sequence_scores(token_rewards, mask), group_ids, norm_adv_by_std, eps),
                      mask), None


@register_adv_est("dr_grpo")
def dr_grpo_advantages(token_rewards, mask, group_ids, values=None, *, eps: float = 1e-6):
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): A_{i,t} = R_i - mean(R_group).
    Dividing by the group std weights easy and hard prompts up (a question bias); the mean alone does not."""
    return _broadcast(group_relative(sequence_scores(token_rewards, mask), group_ids, False, eps), mask), None


@register_adv_est("rloo")
def rloo_advantages(token_rewards, mask, group_ids, values=None):
    """RLOO: A_{i,t} = R_i - mean_{j != i} R_j over the other samples of the same prompt (see :func:`leave_one_out`)."""
    return _broadcast(leave_one_out(sequence_scores(token_rewards, mask), group_ids), mask), None


@register_adv_est("reinforce_pp")
def reinforce_pp_advantages(token_rewards, mask, group_ids=None, values=None, *, gamma: float = 1.0, reduce=None):
    """REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning LLMs"):

        G_t = sum_{s >= t} gamma^(s-t) r_s,    A_t = (G_t - mean_batch(G)) / std_batch(G)

    with r_t carrying the per-token KL penalty and the score on the last token; mean and std over every
    response token of the global batch (no critic, no group)."""
    return masked_whiten(discounted_returns(token_rewards, mask, gamma), mask, reduce=reduce), None


@register_adv_est("reinforce_pp_baseline")
def reinforce_pp_baseline_advantages(token_rewards, mask, group_ids, values=None, *, gamma: float = 1.0,
                                     reduce=None):
    """REINFORCE++-baseline (Hu 2025, sec. on group sampling): subtract the group mean of the outcome score
    first, then normalise over the batch:

        R~_i = R_i - mean(R_group),   r~_t = r_t with the score R_i replaced by R~_i,
        A_t  = whiten_batch( sum_{s >= t} gamma^(s-t) r~_s )

    The group mean removes the prompt's difficulty; the batch std (not the group's) keeps the scale stable."""
    scores = sequence_scores(token_rewards, mask)
    mean, _, _, _ = _group_stats(scores, group_ids)
    shifted = outcome_token_rewards(-mean.to(torch.float32), mask) + token_rewards
    return masked_whiten(discounted_returns(shifted, mask, gamma), mask, reduce=reduce), None


@register_adv_est("gae")
def gae_estimator(token_rewards, mask, group_ids=None, values=None, *, gamma: float = 1.0, lam: float = 0.95,
                  reduce=None):
    """PPO-RLHF (Ouyang et al. 2022; Ziegler et al. 2019): GAE over the response tokens with the critic's values,
    advantages then whitened over the batch (as veRL and OpenRLHF do); returns = A + V, before whitening, are
    the critic's targets."""
    if values is None:
        raise ValueError("the 'gae' advantage estimator needs the critic's values (run pipelines/ppo.py, not grpo.py)")
    adv, ret = gae_advantages(token_rewards, values, mask, gamma=gamma, lam=lam)
    return masked_whiten(adv, mask, reduce=reduce), ret
