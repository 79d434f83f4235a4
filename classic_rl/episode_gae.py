"""GAE over vector-environment rollouts, computed by ``learners.advantages.gae_advantages``.

A rollout of N environments over T steps holds, in each env's column, the end of one episode, whole
episodes, and the start of another. ``gae_advantages`` works on [B, L] rows whose mask-0 padding stops the
recursion, so each column is cut into its episode pieces, one piece per row. Where a piece ends decides
what lies beyond it:

    terminated (the pole fell)        nothing:               V_boot = 0
    truncated (500-step time limit)   the state it stopped:  V_boot = V(final observation)
    the rollout's last step           the next rollout:      V_boot = V(s_T)

and V_boot enters as r'_L = r_L + gamma * V_boot on the piece's last step, which makes that step's
delta_L = r_L + gamma * V_boot - V(s_L), exactly GAE's (Schulman et al. 2016), while the mask ends the sum.
"""
from __future__ import annotations

import torch

from learners.advantages import gae_advantages


def rollout_gae(rewards: torch.Tensor, values: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor,
                final_values: torch.Tensor, last_values: torch.Tensor, gamma: float, lam: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns [T, N] of a vector-env rollout.

    rewards, values, terminated, truncated, final_values: [T, N] (step t of env n). ``final_values[t, n]`` is
    V of the true last observation where the episode was truncated at step t (read only there);
    ``last_values`` [N] is V(s_T), the observation after the rollout. Returns (A, A + V).
    """
    T, N = rewards.shape
    ends = (terminated | truncated).clone()
    ends[-1] = True
    pieces = []  # (env, first step, last step)
    for n in range(N):
        t0 = 0
        for t in torch.nonzero(ends[:, n]).flatten().tolist():
            pieces.append((n, t0, t))
            t0 = t + 1
    L = max(t1 - t0 + 1 for _, t0, t1 in pieces)
    B = len(pieces)
    r = torch.zeros(B, L)
    v = torch.zeros(B, L)
    m = torch.zeros(B, L)
    rows, cols, envs, steps = [], [], [], []
    for b, (n, t0, t1) in enumerate(pieces):
        length = t1 - t0 + 1
        r[b, :length] = rewards[t0:t1 + 1, n]
        v[b, :length] = values[t0:t1 + 1, n]
        m[b, :length] = 1.0
        if terminated[t1, n]:
            boot = 0.0
        elif truncated[t1, n]:
            boot = float(final_values[t1, n])
        else:
            boot = float(last_values[n])
        r[b, length - 1] += gamma * boot
        rows += [b] * length
        cols += list(range(length))
        envs += [n] * length
        steps += list(range(t0, t1 + 1))
    adv, ret = gae_advantages(r, v, m, gamma=gamma, lam=lam)
    advantages = torch.zeros(T, N)
    returns = torch.zeros(T, N)
    advantages[steps, envs] = adv[rows, cols]
    returns[steps, envs] = ret[rows, cols]
    return advantages, returns
