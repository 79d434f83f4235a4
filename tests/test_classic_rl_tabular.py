"""Tabular classic RL: MDP readers, policy evaluation / value iteration / policy iteration, Q-learning and
SARSA, and the one-command visual demo."""
import json

import numpy as np
import pytest
import torch

from classic_rl.dynamic_programming import (
    finite_horizon_evaluation, greedy_policy, optimal_actions, policy_evaluation, policy_iteration, q_from_v,
    value_iteration,
)
from classic_rl.mdp import from_gymnasium, gridworld, gymnasium_returns, most_likely_path
from classic_rl.td_control import td_control

MAZE = ["S....", ".###.", ".#G..", ".#.#.", "...#."]


@pytest.fixture(scope="module")
def lake():
    return from_gymnasium("FrozenLake-v1")  # 4x4, slippery


def test_value_iteration_reaches_frozenlake_optimum_checked_by_rollouts(lake):
    vi = value_iteration(lake, gamma=0.99, tol=1e-10)
    pi = policy_iteration(lake, gamma=0.99, tol=1e-10)
    assert torch.equal(vi.policy, pi.policy)
    torch.testing.assert_close(vi.V, pi.V, atol=1e-8, rtol=0)
    # gymnasium stops FrozenLake after 100 steps: success = P(goal within 100 steps), known to be about 0.74
    success = float(finite_horizon_evaluation(lake, vi.policy, horizon=100)[0])
    assert 0.73 < success < 0.75
    # the real environment, its own sampling: 2000 episodes have a standard error of about 0.01
    rate = gymnasium_returns("FrozenLake-v1", vi.policy, episodes=2000, seed=0).mean()
    assert abs(rate - success) < 0.04, (rate, success)
    # optimal means no policy does better anywhere: try random deterministic ones
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        policy = torch.randint(0, 4, (lake.n_states,), generator=g)
        V, _ = policy_evaluation(lake, policy, gamma=0.99)
        assert torch.all(V <= vi.V + 1e-8)
    uniform_success = float(finite_horizon_evaluation(lake, torch.full((16, 4), 0.25), 100)[0])
    assert uniform_success < 0.1


def test_policy_evaluation_equals_the_linear_solve(lake):
    """V^pi = (I - gamma P_pi)^-1 R_pi, with P_pi the continuation matrix of pi (an independent computation)."""
    gamma = 0.95
    probs = torch.softmax(torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64), -1)
    R_pi = (probs * lake.expected_reward()).sum(-1)
    P_pi = torch.einsum("sa,sat->st", probs, lake.continuation())
    exact = torch.linalg.solve(torch.eye(16, dtype=torch.float64) - gamma * P_pi, R_pi)
    V, sweeps = policy_evaluation(lake, probs, gamma=gamma, tol=1e-12)
    torch.testing.assert_close(V, exact, atol=1e-9, rtol=0)
    assert sweeps > 1
    # and the Bellman optimality equation holds at value iteration's fixed point
    vi = value_iteration(lake, gamma=gamma, tol=1e-12)
    torch.testing.assert_close(q_from_v(lake, vi.V, gamma).max(-1).values, vi.V, atol=1e-9, rtol=0)


def test_q_learning_greedy_policy_equals_value_iterations_on_a_deterministic_grid():
    maze = gridworld(MAZE)
    decision = torch.tensor([ch in "S." for ch in "".join(MAZE)])
    vi = value_iteration(maze, gamma=0.9)
    run = td_control(maze, "q_learning", episodes=500, alpha=0.5, epsilon=0.5, gamma=0.9, seed=0)
    ql = greedy_policy(run.Q)
    optimal = optimal_actions(vi.Q)
    unique = optimal.sum(-1) == 1
    # where the optimum is unique the two policies pick the same action; elsewhere Q-learning picks an optimal one
    assert torch.equal(ql[decision & unique], vi.policy[decision & unique])
    assert optimal[decision].gather(1, ql[decision, None]).all()
    V_ql, _ = policy_evaluation(maze, ql, gamma=0.9)
    torch.testing.assert_close(V_ql[decision], vi.V[decision], atol=1e-8, rtol=0)
    # and the shortest path: S -> goal in 8 moves (the right-hand corridor)
    assert len(most_likely_path(maze, ql)) - 1 == 8


def test_cliff_sarsa_takes_the_safe_path_and_q_learning_the_edge():
    cliff = from_gymnasium("CliffWalking-v1")
    runs = {m: td_control(cliff, m, episodes=1000, alpha=0.2, epsilon=0.1, gamma=1.0, seed=3)
            for m in ("sarsa", "q_learning")}
    paths = {m: most_likely_path(cliff, greedy_policy(r.Q)) for m, r in runs.items()}
    goal = 47
    assert paths["q_learning"][-1] == goal and paths["sarsa"][-1] == goal
    # Q-learning: the optimal 13-step path along the cliff's edge (row 2)
    assert len(paths["q_learning"]) - 1 == 13
    assert all(cliff.cell(s)[0] == 2 for s in paths["q_learning"] if 1 <= cliff.cell(s)[1] <= 10)
    # SARSA: a longer path at least two rows from the cliff over the cliff's columns
    assert len(paths["sarsa"]) - 1 > 13
    assert all(cliff.cell(s)[0] <= 1 for s in paths["sarsa"] if 1 <= cliff.cell(s)[1] <= 10)
    # and while exploring, SARSA's episodes pay less than Q-learning's falls
    assert np.mean(runs["sarsa"].returns[-300:]) > np.mean(runs["q_learning"].returns[-300:]) + 10


def test_mdp_readers_and_their_errors():
    cliff = from_gymnasium("CliffWalking-v1")
    assert (cliff.n_states, cliff.n_actions) == (48, 4) and cliff.grid[3] == "S" + "C" * 10 + "G"
    # stepping right from the start falls off the cliff: -100 and back to the start, not the end
    assert cliff.step(36, 1, np.random.default_rng(0)) == (36, -100.0, False)
    slippery = gridworld(["S.", ".G"], slip=0.2)
    torch.testing.assert_close(slippery.transition().sum(-1), torch.ones(4, 4, dtype=torch.float64))
    assert float(slippery.transition()[0, 1, 1]) == pytest.approx(0.8)  # right, as asked
    with pytest.raises(ValueError, match=r"unknown cell 'x' at row 1, column 0"):
        gridworld(["S.", "xG"])
    with pytest.raises(ValueError, match="exactly one start"):
        gridworld(["..", ".G"])
    taxi = from_gymnasium("Taxi-v4")
    assert (taxi.n_states, taxi.n_actions, taxi.grid) == (500, 6, None)  # a table without a grid to draw
    with pytest.raises(ValueError, match="no transition table"):
        from_gymnasium("CartPole-v1")
    with pytest.raises(RuntimeError, match="did not converge"):
        # gamma = 1 and a policy that walks into the wall forever: unbounded cost
        policy_evaluation(gridworld(["S.G"]), torch.zeros(3, dtype=torch.long), gamma=1.0, max_sweeps=500)


def test_demo_writes_every_picture_in_one_command(tmp_path):
    from classic_rl import demo

    summary = demo.main(["--out", str(tmp_path), "--runs", "2", "--episodes", "400", "--rollouts", "300"])
    for name in ("frozenlake_planning.png", "maze_qlearning.png", "cliff_paths.png", "cliff_returns.png",
                 "cliff_values.png", "qlearning_cliff.gif", "metrics.jsonl", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    import imageio.v3 as iio

    assert iio.imread(tmp_path / "qlearning_cliff.gif", index=None).shape[0] == 21  # first + 20 snapshots
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["frozenlake/same_policy"] is True and saved["maze/greedy_actions_optimal"] is True
    assert summary["cliff/q_learning_path_steps"] == 13
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 400 and {"cliff/sarsa_return", "cliff/q_learning_return"} <= set(rows[0])
