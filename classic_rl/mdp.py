"""Finite MDPs as tables: gymnasium's toy-text models (FrozenLake, CliffWalking, Taxi) and hand-made grids.

One representation serves both the planners (which read the tables) and the learners (which only sample
from them, as an environment would): gymnasium's ``env.P[s][a] = [(p, s', r, terminated), ...]`` stored as
padded tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# Action order of hand-made grids: CliffWalking's (0 up, 1 right, 2 down, 3 left), so a +- 1 (mod 4) are
# the two perpendicular moves a slippery grid slides into.
GRID_DELTAS = [(-1, 0), (0, 1), (1, 0), (0, -1)]
GRID_CHARS = {
    "S": "start", "G": "goal (ends the episode)", "H": "hole (ends the episode)",
    "C": "cliff (back to S)", "#": "wall", ".": "free",
}


@dataclass
class MDP:
    """A finite MDP in gymnasium's toy-text form, as tensors.

    Each (s, a) has K outcomes k (padded with probability 0):
        prob[s, a, k]        p(k | s, a)
        next_state[s, a, k]  s'
        reward[s, a, k]      r(s, a, s')
        done[s, a, k]        the transition ends the episode (s' terminal)
    ``start[s]`` is the initial-state distribution. ``grid`` (rows of map characters, see GRID_CHARS) and
    ``action_deltas`` ((d_row, d_col) per action) are only used to draw grid MDPs.
    """

    prob: torch.Tensor
    next_state: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor
    start: torch.Tensor
    name: str = "mdp"
    grid: list[str] | None = None
    action_deltas: list[tuple[int, int]] | None = None
    _np: dict = field(default=None, repr=False)

    def __post_init__(self):
        S, A, K = self.prob.shape
        for n, t in (("next_state", self.next_state), ("reward", self.reward), ("done", self.done)):
            if t.shape != (S, A, K):
                raise ValueError(f"MDP {self.name}: {n} has shape {tuple(t.shape)}, expected {(S, A, K)} like prob")
        if self.start.shape != (S,):
            raise ValueError(f"MDP {self.name}: start has shape {tuple(self.start.shape)}, expected ({S},)")
        sums = self.prob.sum(-1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-6):
            s, a = map(int, torch.nonzero((sums - 1).abs() > 1e-6)[0])
            raise ValueError(f"MDP {self.name}: outcome probabilities of state {s}, action {a} sum to "
                             f"{float(sums[s, a]):.6f}, not 1")
        if int(self.next_state.min()) < 0 or int(self.next_state.max()) >= S:
            raise ValueError(f"MDP {self.name}: next_state must lie in [0, {S})")
        # Sampling one step at a time from numpy is ~10x faster than indexing tensors (TD loops).
        self._np = {"prob": self.prob.numpy(), "next": self.next_state.numpy(), "reward": self.reward.numpy(),
                    "done": self.done.numpy(), "start": self.start.numpy()}

    @property
    def n_states(self) -> int:
        return self.prob.shape[0]

    @property
    def n_actions(self) -> int:
        return self.prob.shape[1]

    def expected_reward(self) -> torch.Tensor:
        """R[s, a] = sum_k p(k|s,a) r_k."""
        return (self.prob * self.reward).sum(-1)

    def continuation(self) -> torch.Tensor:
        """C[s, a, s'] = sum_k p(k|s,a) (1 - done_k) [s'_k = s']: the probability of going on from s'.

        With it every Bellman backup is one line, ``Q = R + gamma * C @ V``: terminal transitions carry no
        future value.
        """
        S, A, _ = self.prob.shape
        C = torch.zeros(S, A, S, dtype=self.prob.dtype)
        return C.scatter_add_(2, self.next_state, self.prob * (~self.done).to(self.prob.dtype))

    def transition(self) -> torch.Tensor:
        """P[s, a, s'] = sum_k p(k|s,a) [s'_k = s']."""
        S, A, _ = self.prob.shape
        return torch.zeros(S, A, S, dtype=self.prob.dtype).scatter_add_(2, self.next_state, self.prob)

    def reset(self, rng: np.random.Generator) -> int:
        return int(rng.choice(self.n_states, p=self._np["start"]))

    def step(self, s: int, a: int, rng: np.random.Generator) -> tuple[int, float, bool]:
        """Sample one transition from (s, a): (s', r, done), as the environment itself would."""
        p = self._np["prob"][s, a]
        k = 0 if p[0] == 1.0 else int(rng.choice(len(p), p=p))
        return int(self._np["next"][s, a, k]), float(self._np["reward"][s, a, k]), bool(self._np["done"][s, a, k])

    def cell(self, s: int) -> tuple[int, int]:
        """(row, col) of state s on the grid."""
        return divmod(s, len(self.grid[0]))


def from_gymnasium(env_id: str, **kwargs) -> MDP:
    """The MDP of a gymnasium toy-text environment, read from its transition table ``env.unwrapped.P``.

    ``from_gymnasium("FrozenLake-v1")`` (4x4, slippery), ``from_gymnasium("FrozenLake-v1", is_slippery=False)``,
    ``from_gymnasium("CliffWalking-v1")``; keyword arguments go to ``gymnasium.make``.
    """
    import gymnasium as gym

    env = gym.make(env_id, **kwargs).unwrapped
    if not hasattr(env, "P"):
        raise ValueError(f"{env_id} has no transition table `P`: only gymnasium's toy-text models "
                         "(FrozenLake-v1, CliffWalking-v1, Taxi-v4) can be read as tabular MDPs")
    S, A = env.observation_space.n, env.action_space.n
    K = max(len(env.P[s][a]) for s in range(S) for a in range(A))
    prob = torch.zeros(S, A, K, dtype=torch.float64)
    nxt = torch.zeros(S, A, K, dtype=torch.long)
    rew = torch.zeros(S, A, K, dtype=torch.float64)
    done = torch.zeros(S, A, K, dtype=torch.bool)
    for s in range(S):
        for a in range(A):
            for k, (p, s2, r, d) in enumerate(env.P[s][a]):
                prob[s, a, k], nxt[s, a, k], rew[s, a, k], done[s, a, k] = p, int(s2), r, bool(d)
            nxt[s, a, len(env.P[s][a]):] = s  # padding: probability 0, any valid index
    start = torch.as_tensor(np.asarray(env.initial_state_distrib), dtype=torch.float64)
    grid, deltas = None, None
    if type(env).__name__ == "FrozenLakeEnv":
        grid = ["".join(c.decode() for c in row).replace("F", ".") for row in env.desc]
        deltas = [(0, -1), (1, 0), (0, 1), (-1, 0)]  # left, down, right, up
    elif type(env).__name__ == "CliffWalkingEnv":
        rows, cols = env.shape
        cells = [["C" if env._cliff[r, c] else "." for c in range(cols)] for r in range(rows)]
        cells[rows - 1][0], cells[rows - 1][cols - 1] = "S", "G"
        grid = ["".join(r) for r in cells]
        deltas = list(GRID_DELTAS)  # up, right, down, left
    env.close()
    name = env_id + "".join(f",{k}={v}" for k, v in kwargs.items())
    return MDP(prob, nxt, rew, done, start, name=name, grid=grid, action_deltas=deltas)


def gridworld(rows: list[str], slip: float = 0.0, step_reward: float = -1.0, goal_reward: float = 0.0,
              hole_reward: float = 0.0, cliff_reward: float = -100.0, name: str = "grid") -> MDP:
    """A hand-made grid MDP from a map (characters: see GRID_CHARS; actions up, right, down, left).

    Entering a cell gives ``step_reward`` (``goal_reward`` / ``hole_reward`` for G / H, which end the episode;
    ``cliff_reward`` for C, which sends the agent back to S without ending it, as in Sutton & Barto's cliff
    walk, Example 6.6). Walls and the border block a move (the agent stays). With ``slip`` > 0 the agent
    slides into each perpendicular direction with probability slip / 2.
    """
    if not rows or any(len(r) != len(rows[0]) for r in rows):
        raise ValueError(f"grid {name}: rows must be non-empty and of equal length, got lengths {[len(r) for r in rows]}")
    for i, row in enumerate(rows):
        for j, ch in enumerate(row):
            if ch not in GRID_CHARS:
                raise ValueError(f"grid {name}: unknown cell {ch!r} at row {i}, column {j}; use one of {GRID_CHARS}")
    flat = "".join(rows)
    if flat.count("S") != 1 or flat.count("G") < 1:
        raise ValueError(f"grid {name}: needs exactly one start 'S' and at least one goal 'G'")
    if not 0.0 <= slip < 1.0:
        raise ValueError(f"grid {name}: slip must lie in [0, 1), got {slip}")
    H, W = len(rows), len(rows[0])
    S, A = H * W, 4
    start_state = flat.index("S")
    moves = [(1.0 - slip, 0)] + ([(slip / 2, -1), (slip / 2, +1)] if slip > 0 else [])
    K = len(moves)
    prob = torch.zeros(S, A, K, dtype=torch.float64)
    nxt = torch.zeros(S, A, K, dtype=torch.long)
    rew = torch.zeros(S, A, K, dtype=torch.float64)
    done = torch.zeros(S, A, K, dtype=torch.bool)
    for s in range(S):
        r0, c0 = divmod(s, W)
        for a in range(A):
            if flat[s] in "GH#":  # absorbing: the episode has already ended here (walls are never entered)
                prob[s, a, 0], nxt[s, a, :], done[s, a, 0] = 1.0, s, True
                continue
            for k, (p, turn) in enumerate(moves):
                dr, dc = GRID_DELTAS[(a + turn) % 4]
                r, c = r0 + dr, c0 + dc
                if not (0 <= r < H and 0 <= c < W) or rows[r][c] == "#":
                    r, c = r0, c0
                s2, ch = r * W + c, rows[r][c]
                reward, ended = {"G": (goal_reward, True), "H": (hole_reward, True),
                                 "C": (cliff_reward, False)}.get(ch, (step_reward, False))
                if ch == "C":
                    s2 = start_state
                prob[s, a, k], nxt[s, a, k], rew[s, a, k], done[s, a, k] = p, s2, reward, ended
    start = torch.zeros(S, dtype=torch.float64)
    start[start_state] = 1.0
    return MDP(prob, nxt, rew, done, start, name=name, grid=list(rows), action_deltas=list(GRID_DELTAS))


def most_likely_path(mdp: MDP, policy: torch.Tensor, max_steps: int = 200) -> list[int]:
    """States visited from the most likely start when following ``policy`` [S] and taking the most likely
    outcome of each step (the path itself on a deterministic grid); stops when the episode ends or a state
    repeats."""
    s = int(mdp.start.argmax())
    path = [s]
    for _ in range(max_steps):
        a = int(policy[s])
        k = int(mdp.prob[s, a].argmax())
        s, ended = int(mdp.next_state[s, a, k]), bool(mdp.done[s, a, k])
        if s in path and not ended:
            path.append(s)
            break
        path.append(s)
        if ended:
            break
    return path


def gymnasium_returns(env_id: str, policy: torch.Tensor, episodes: int, seed: int = 0, **kwargs) -> np.ndarray:
    """Undiscounted returns of ``policy`` [S] over ``episodes`` episodes of the real gymnasium environment
    (its own sampling and time limit): an independent check of what the tables predict."""
    import gymnasium as gym

    env = gym.make(env_id, **kwargs)
    actions = policy.tolist()
    returns = np.zeros(episodes)
    s, _ = env.reset(seed=seed)
    for i in range(episodes):
        if i:
            s, _ = env.reset()
        done = False
        while not done:
            s, r, terminated, truncated, _ = env.step(actions[int(s)])
            returns[i] += r
            done = terminated or truncated
    env.close()
    return returns
