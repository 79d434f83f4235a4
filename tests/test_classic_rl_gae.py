"""GAE: the vectorised estimator (learners.advantages.gae_advantages) and its use on vector-env rollouts
(classic_rl.episode_gae.rollout_gae), each against a plain loop written out here."""
import pytest
import torch

from classic_rl.episode_gae import rollout_gae
from learners.advantages import gae_advantages


def loop_gae_row(r, v, gamma, lam):
    """One episode piece, the textbook way: delta_t = r_t + gamma V_{t+1} - V_t (V beyond the end = 0),
    A_t = delta_t + gamma lam A_{t+1}."""
    n = len(r)
    adv = [0.0] * n
    nxt = 0.0
    for t in reversed(range(n)):
        v_next = v[t + 1] if t + 1 < n else 0.0
        delta = r[t] + gamma * v_next - v[t]
        nxt = delta + gamma * lam * nxt
        adv[t] = nxt
    return adv


@pytest.mark.parametrize("gamma, lam", [(0.99, 0.95), (1.0, 1.0), (0.9, 0.0), (0.5, 0.7)])
def test_vectorised_gae_equals_plain_loop_on_padded_rows(gamma, lam):
    g = torch.Generator().manual_seed(0)
    lengths = [7, 1, 4, 7, 3]
    B, T = len(lengths), max(lengths)
    r = torch.randn(B, T, generator=g)
    v = torch.randn(B, T, generator=g)
    mask = torch.zeros(B, T)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    adv, ret = gae_advantages(r, v, mask, gamma=gamma, lam=lam)
    for b, n in enumerate(lengths):
        want = torch.tensor(loop_gae_row(r[b, :n].tolist(), v[b, :n].tolist(), gamma, lam))
        torch.testing.assert_close(adv[b, :n], want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ret[b, :n], want + v[b, :n], rtol=1e-5, atol=1e-5)
        assert torch.all(adv[b, n:] == 0) and torch.all(ret[b, n:] == 0)


def loop_rollout_gae(rewards, values, terminated, truncated, final_values, last_values, gamma, lam):
    """GAE over a [T, N] vector-env rollout, one env and one step at a time, with the boundary cases spelt out."""
    T, N = rewards.shape
    adv = torch.zeros(T, N)
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            if terminated[t, n]:
                v_next, go_on = 0.0, 0.0  # the episode ended: nothing beyond
            elif truncated[t, n]:
                v_next, go_on = float(final_values[t, n]), 0.0  # cut by the time limit: bootstrap, new episode next
            elif t == T - 1:
                v_next, go_on = float(last_values[n]), 0.0  # rollout ends mid-episode: bootstrap
            else:
                v_next, go_on = float(values[t + 1, n]), 1.0
            delta = float(rewards[t, n]) + gamma * v_next - float(values[t, n])
            running = delta + gamma * lam * go_on * running
            adv[t, n] = running
    return adv, adv + values


@pytest.mark.parametrize("gamma, lam", [(0.99, 0.95), (0.99, 1.0), (0.8, 0.5)])
def test_rollout_gae_equals_plain_loop_across_episode_boundaries(gamma, lam):
    g = torch.Generator().manual_seed(1)
    T, N = 16, 4
    rewards = torch.rand(T, N, generator=g)
    values = torch.randn(T, N, generator=g)
    final_values = torch.randn(T, N, generator=g)
    last_values = torch.randn(N, generator=g)
    u = torch.rand(T, N, generator=g)
    terminated, truncated = u < 0.12, (u >= 0.12) & (u < 0.2)
    terminated[-1, 0], truncated[-1, 1] = True, True  # ends exactly at the rollout's last step
    terminated[:, 2], truncated[:, 2] = False, False  # one env with no boundary at all
    assert terminated.any() and truncated.any()
    adv, ret = rollout_gae(rewards, values, terminated, truncated, final_values, last_values, gamma, lam)
    want_adv, want_ret = loop_rollout_gae(rewards, values, terminated, truncated, final_values, last_values, gamma, lam)
    torch.testing.assert_close(adv, want_adv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret, want_ret, rtol=1e-5, atol=1e-5)


def test_lambda_one_is_the_monte_carlo_advantage_reinforce_uses():
    """REINFORCE with a baseline: G_t - V(s_t), G_t the discounted return-to-go of a finished episode."""
    g = torch.Generator().manual_seed(2)
    r = torch.rand(1, 9, generator=g)
    v = torch.randn(1, 9, generator=g)
    gamma = 0.97
    adv, ret = gae_advantages(r, v, torch.ones(1, 9), gamma=gamma, lam=1.0)
    G = torch.tensor([sum(gamma ** k * float(r[0, t + k]) for k in range(9 - t)) for t in range(9)])
    torch.testing.assert_close(ret[0], G, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adv[0], G - v[0], rtol=1e-5, atol=1e-5)
