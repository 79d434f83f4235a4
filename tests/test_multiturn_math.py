"""The learner's side of multi-turn trajectories: tool results between the model's turns are masked out of the
loss, and credit (GAE) flows across them to earlier turns. Pure functions; the rollout itself is tested in
tests/test_multiturn.py."""
from __future__ import annotations

import pytest
import torch

from config import AlgoConfig, TrainConfig
from learners.advantages import gae_advantages
from learners.algorithms import resolve
from learners.step import prepare_batch


def plain_gae_over(rewards, values, keep, gamma, lam):
    """GAE by hand over the positions in ``keep`` only (the model's tokens), as if the others were not there."""
    adv = [0.0] * len(rewards)
    nxt_v, nxt_a = 0.0, 0.0
    for t in reversed(keep):
        delta = rewards[t] + gamma * nxt_v - values[t]
        nxt_a = delta + gamma * lam * nxt_a
        adv[t], nxt_v = nxt_a, values[t]
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.8)])
def test_gae_skips_tool_tokens_inside_a_trajectory(gamma, lam):
    g = torch.Generator().manual_seed(0)
    # two rows: prompt (0), turn 1 (1), tool result (0), turn 2 (1), padding (0); the second has no hole
    mask = torch.tensor([[0, 1, 1, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 1, 0, 0]], dtype=torch.float32)
    rewards = torch.zeros(2, 8)
    rewards[0, 6], rewards[1, 5] = 1.0, -1.0
    values = torch.rand(2, 8, generator=g)
    adv, ret = gae_advantages(rewards, values, mask, gamma=gamma, lam=lam)
    for i in range(2):
        keep = [t for t in range(8) if mask[i, t] > 0]
        want = plain_gae_over(rewards[i].tolist(), values[i].tolist(), keep, gamma, lam)
        assert adv[i].tolist() == pytest.approx(want, abs=1e-6)
        assert all(adv[i, t] == 0 and ret[i, t] == 0 for t in range(8) if mask[i, t] == 0)
    # the outcome reward reaches the first turn across the tool result (a stop there would leave it at -V)
    assert adv[0, 1] != pytest.approx(-values[0, 1].item())


def test_loss_mask_covers_exactly_the_model_tokens():
    """prepare_batch with loss_masks: the response mask (loss, KL, advantages) is 1 on sampled tokens only."""
    algo = resolve(AlgoConfig(name="grpo", kl_coef=0.0), 16)
    prompts = [[5, 6, 7], [5, 6, 7]]
    completions = [[10, 11, 12, 20, 21, 13, 14], [10, 15]]
    masks = [[1, 1, 1, 0, 0, 1, 1], [1, 1]]
    model = torch.nn.Linear(1, 1)  # kl_coef 0 and one update per batch: prepare_batch runs no forward
    batch, _ = prepare_batch(model, prompts, completions, [1.0, 0.0], [0, 0], algo, TrainConfig(), pad_id=0,
                             kl_coef=0.0, loss_masks=masks)
    for i, (p, c, m) in enumerate(zip(prompts, completions, masks)):
        # position t - 1 predicts token t: completion token j sits at len(p) + j, predicted from len(p) + j - 1
        want = [0.0] * (batch.response_mask.shape[1])
        for j, on in enumerate(m):
            want[len(p) + j - 1] = float(on)
        assert batch.response_mask[i].tolist() == want
        assert all(batch.advantages[i, t] == 0 for t, w in enumerate(want) if w == 0)
    assert batch.input_ids[0, 3:10].tolist() == completions[0]  # the ids trained on are the ids given, unchanged
