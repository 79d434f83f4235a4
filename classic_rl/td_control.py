"""Model-free control by temporal differences: Q-learning and SARSA with epsilon-greedy exploration.

The agent only samples transitions (``MDP.step``), as it would from an environment; it never reads the
tables. The two methods differ in one line, the target of the update:

    SARSA (Rummery & Niranjan 1994; Sutton & Barto 2018, sec. 6.4), on-policy:
        Q(S, A) <- Q(S, A) + alpha [ R + gamma * Q(S', A') - Q(S, A) ],     A' the action it will take next
    Q-learning (Watkins 1989; Sutton & Barto 2018, sec. 6.5), off-policy:
        Q(S, A) <- Q(S, A) + alpha [ R + gamma * max_a Q(S', a) - Q(S, A) ]

with no future term when the transition ends the episode. SARSA learns the value of the exploring policy
(so it keeps away from a cliff that exploration may push it over); Q-learning learns the optimal Q* whatever
it explores with.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from classic_rl.mdp import MDP


@dataclass
class TDRun:
    """Q [S, A] at the end; the undiscounted return and length of every (exploring) episode; Q snapshots."""

    Q: torch.Tensor
    returns: list[float]
    lengths: list[int]
    snapshots: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (episodes done, Q copy)


def epsilon_greedy(q: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
    """With probability epsilon a uniformly random action, else a greedy one; ties are broken at random so an
    untrained (all-equal) Q still explores."""
    if rng.random() < epsilon:
        return int(rng.integers(len(q)))
    best = np.flatnonzero(q == q.max())
    return int(best[0] if len(best) == 1 else rng.choice(best))


def td_control(mdp: MDP, method: Literal["q_learning", "sarsa"], episodes: int, alpha: float = 0.5,
               gamma: float = 1.0, epsilon: float = 0.1, seed: int = 0, max_steps: int = 1_000,
               snapshot_every: int = 0) -> TDRun:
    """Run ``episodes`` episodes of SARSA or Q-learning (update rules in the module docstring).

    ``max_steps`` cuts an episode that has not ended (an early, badly exploring one); the cut is a time
    limit, not a terminal state, so nothing special is learnt from it.
    """
    if method not in ("q_learning", "sarsa"):
        raise ValueError(f"method must be 'q_learning' or 'sarsa', got {method!r}")
    rng = np.random.default_rng(seed)
    # Per-step work is a few scalar reads and writes: numpy is ~10x faster than tensors here.
    Q = np.zeros((mdp.n_states, mdp.n_actions))
    returns, lengths, snapshots = [], [], []
    for episode in range(episodes):
        s = mdp.reset(rng)
        a = epsilon_greedy(Q[s], epsilon, rng)
        G, t = 0.0, 0
        for t in range(1, max_steps + 1):
            s2, r, done = mdp.step(s, a, rng)
            G += r
            if method == "sarsa":
                a2 = epsilon_greedy(Q[s2], epsilon, rng)
                target = r + (0.0 if done else gamma * Q[s2, a2])
                Q[s, a] += alpha * (target - Q[s, a])
            else:
                target = r + (0.0 if done else gamma * Q[s2].max())
                Q[s, a] += alpha * (target - Q[s, a])
                a2 = epsilon_greedy(Q[s2], epsilon, rng)
            s, a = s2, a2
            if done:
                break
        returns.append(G)
        lengths.append(t)
        if snapshot_every and ((episode + 1) % snapshot_every == 0 or episode == 0):
            snapshots.append((episode + 1, torch.from_numpy(Q.copy())))
    return TDRun(torch.from_numpy(Q), returns, lengths, snapshots)
