"""Planning with a known model: policy evaluation, value iteration, policy iteration (Sutton & Barto 2018, ch. 4).

Every backup is the same line: with R[s, a] the expected reward and C[s, a, s'] the probability of going on
from s' (0 for transitions that end the episode; ``MDP.continuation``),

    Q(s, a) = R(s, a) + gamma * sum_s' C(s, a, s') V(s')

Bellman expectation (evaluation of pi):  V(s) <- sum_a pi(a|s) Q(s, a)
Bellman optimality (value iteration):    V(s) <- max_a Q(s, a)

Both are gamma-contractions in the sup norm, so sweeping until max_s |V_{k+1}(s) - V_k(s)| < tol converges;
with gamma = 1 they converge only when the episode ends with probability 1 (a "proper" policy).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from classic_rl.mdp import MDP


@dataclass
class Solution:
    """What a planner returns: V [S], Q [S, A], a greedy deterministic policy [S], and how it converged."""

    V: torch.Tensor
    Q: torch.Tensor
    policy: torch.Tensor
    sweeps: int
    deltas: list[float] = field(default_factory=list)  # max |V_{k+1} - V_k| per sweep (value iteration)
    policy_changes: list[int] = field(default_factory=list)  # states whose action changed (policy iteration)


def q_from_v(mdp: MDP, V: torch.Tensor, gamma: float) -> torch.Tensor:
    """Q(s, a) = R(s, a) + gamma * sum_s' C(s, a, s') V(s')   (one Bellman backup)."""
    return mdp.expected_reward() + gamma * torch.einsum("sat,t->sa", mdp.continuation(), V.to(torch.float64))


def greedy_policy(Q: torch.Tensor, tie_tol: float = 1e-9) -> torch.Tensor:
    """pi(s) = argmax_a Q(s, a); among actions within ``tie_tol`` of the best, the lowest index (so rounding
    noise never decides between equally good actions)."""
    return (Q >= Q.max(-1, keepdim=True).values - tie_tol).to(torch.int8).argmax(-1)


def optimal_actions(Q: torch.Tensor, tie_tol: float = 1e-9) -> torch.Tensor:
    """[S, A] mask of the actions within ``tie_tol`` of max_a Q(s, a) (all optimal actions, ties included)."""
    return Q >= Q.max(-1, keepdim=True).values - tie_tol


def _as_probs(policy: torch.Tensor, n_actions: int) -> torch.Tensor:
    if policy.dim() == 1:  # deterministic: action index per state
        return torch.nn.functional.one_hot(policy.long(), n_actions).to(torch.float64)
    return policy.to(torch.float64)


def policy_evaluation(mdp: MDP, policy: torch.Tensor, gamma: float = 0.99, tol: float = 1e-10,
                      max_sweeps: int = 100_000, V0: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """Iterative policy evaluation (Sutton & Barto 2018, sec. 4.1), synchronous sweeps of

        V_{k+1}(s) = sum_a pi(a|s) [ R(s, a) + gamma * sum_s' C(s, a, s') V_k(s') ]

    until max_s |V_{k+1}(s) - V_k(s)| < tol. ``policy`` is [S] (action per state) or [S, A] (probabilities).
    Returns (V^pi, sweeps).
    """
    pi = _as_probs(policy, mdp.n_actions)
    R, C = mdp.expected_reward(), mdp.continuation()
    V = torch.zeros(mdp.n_states, dtype=torch.float64) if V0 is None else V0.clone().to(torch.float64)
    for sweep in range(1, max_sweeps + 1):
        V_new = (pi * (R + gamma * torch.einsum("sat,t->sa", C, V))).sum(-1)
        delta = float((V_new - V).abs().max())
        V = V_new
        if delta < tol:
            return V, sweep
    raise RuntimeError(f"policy evaluation on {mdp.name} did not converge in {max_sweeps} sweeps (last change "
                       f"{delta:.3g} > tol {tol:g}); with gamma={gamma} a policy that never ends an episode has "
                       "unbounded value: lower gamma, or raise max_sweeps")


def finite_horizon_evaluation(mdp: MDP, policy: torch.Tensor, horizon: int, gamma: float = 1.0) -> torch.Tensor:
    """V_T^pi: the expected return of the first ``horizon`` steps (Puterman 1994, ch. 4), by T backups from V_0 = 0

        V_{t+1}(s) = sum_a pi(a|s) [ R(s, a) + gamma * sum_s' C(s, a, s') V_t(s') ]

    With FrozenLake's reward (1 on reaching the goal) and gamma = 1 it is the probability of reaching the goal
    within T steps -- the success rate under gymnasium's 100-step time limit.
    """
    pi = _as_probs(policy, mdp.n_actions)
    R, C = mdp.expected_reward(), mdp.continuation()
    V = torch.zeros(mdp.n_states, dtype=torch.float64)
    for _ in range(horizon):
        V = (pi * (R + gamma * torch.einsum("sat,t->sa", C, V))).sum(-1)
    return V


def value_iteration(mdp: MDP, gamma: float = 0.99, tol: float = 1e-10, max_sweeps: int = 100_000) -> Solution:
    """Value iteration (Bellman 1957; Sutton & Barto 2018, sec. 4.4):

        V_{k+1}(s) = max_a [ R(s, a) + gamma * sum_s' C(s, a, s') V_k(s') ]

    swept until max_s |V_{k+1}(s) - V_k(s)| < tol; then pi*(s) = argmax_a Q(s, a). For gamma < 1 the greedy
    policy of the final V is within 2 gamma tol / (1 - gamma) of optimal (Williams & Baird 1993).
    """
    R, C = mdp.expected_reward(), mdp.continuation()
    V = torch.zeros(mdp.n_states, dtype=torch.float64)
    deltas: list[float] = []
    for sweep in range(1, max_sweeps + 1):
        V_new = (R + gamma * torch.einsum("sat,t->sa", C, V)).max(-1).values
        deltas.append(float((V_new - V).abs().max()))
        V = V_new
        if deltas[-1] < tol:
            Q = R + gamma * torch.einsum("sat,t->sa", C, V)
            return Solution(V, Q, greedy_policy(Q), sweep, deltas)
    raise RuntimeError(f"value iteration on {mdp.name} did not converge in {max_sweeps} sweeps (last change "
                       f"{deltas[-1]:.3g} > tol {tol:g}): lower gamma or raise max_sweeps")


def policy_iteration(mdp: MDP, gamma: float = 0.99, tol: float = 1e-10, max_iterations: int = 1_000,
                     tie_tol: float = 1e-9) -> Solution:
    """Policy iteration (Howard 1960; Sutton & Barto 2018, sec. 4.3): evaluate pi_i exactly (to ``tol``), then

        pi_{i+1}(s) = argmax_a [ R(s, a) + gamma * sum_s' C(s, a, s') V^{pi_i}(s') ]

    until the policy is stable. An action changes only when another is better by more than ``tie_tol``,
    so equally good actions cannot make it cycle. The first policy is greedy on the immediate reward.
    """
    R = mdp.expected_reward()
    policy = greedy_policy(R)
    V = None
    changes: list[int] = []
    sweeps = 0
    for it in range(1, max_iterations + 1):
        V, n = policy_evaluation(mdp, policy, gamma, tol, V0=V)
        sweeps += n
        Q = q_from_v(mdp, V, gamma)
        keep = Q.gather(1, policy[:, None]).squeeze(1) >= Q.max(-1).values - tie_tol
        new_policy = torch.where(keep, policy, greedy_policy(Q, tie_tol))
        changes.append(int((new_policy != policy).sum()))
        policy = new_policy
        if changes[-1] == 0:
            return Solution(V, Q, policy, sweeps, policy_changes=changes)
    raise RuntimeError(f"policy iteration on {mdp.name} did not stabilise in {max_iterations} iterations")
