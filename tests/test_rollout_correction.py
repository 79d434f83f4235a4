"""The rollout/learner mismatch correction (learners/rollout_correction.py) against an independent computation
(numpy, written from the formulas), and its effect on the RL objective's gradient."""
import math

import numpy as np
import pytest
import torch

from config import AlgoConfig
from learners.algorithms import resolve
from learners.rollout_correction import (correction_weights, masked_is_weights, mismatch_metrics,
                                         truncated_is_weights)
from learners.step import rl_objective


def _case(seed=0, B=4, T=7, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    learner = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    engine = learner + torch.randn(B, T, generator=g, dtype=torch.float64) * spread
    mask = (torch.rand(B, T, generator=g) > 0.3).double()
    mask[0, 0] = 1.0
    return learner, engine, mask


@pytest.mark.parametrize("cap", [1.5, 2.0, 5.0])
def test_tis_and_mis_weights_match_numpy(cap):
    learner, engine, _ = _case(spread=1.5)
    rho = np.exp(learner.numpy() - engine.numpy())
    np.testing.assert_allclose(truncated_is_weights(learner, engine, cap).numpy(), np.minimum(rho, cap), rtol=1e-12)
    np.testing.assert_allclose(masked_is_weights(learner, engine, cap).numpy(), np.where(rho <= cap, rho, 0.0), rtol=1e-12)
    assert correction_weights("none", learner, engine, cap) is None
    # the case has ratios on both sides of the cap, so the two corrections really differ here
    assert (rho > cap).any() and (rho <= cap).any()
    with pytest.raises(ValueError, match="unknown rollout correction"):
        correction_weights("clip", learner, engine, cap)


def test_mismatch_metrics_match_numpy():
    learner, engine, mask = _case(seed=3, spread=0.8)
    cap = 2.0
    out = mismatch_metrics(learner, engine, mask, cap)
    lr, m = learner.numpy() - engine.numpy(), mask.numpy().astype(bool)
    rho = np.exp(lr[m])
    assert out["rollout_corr/kl"] == pytest.approx(np.mean(rho - 1 - lr[m]), rel=1e-10)
    assert out["rollout_corr/k1"] == pytest.approx(np.mean(-lr[m]), rel=1e-10)
    assert out["rollout_corr/max_abs_diff"] == pytest.approx(np.max(np.abs(lr[m])), rel=1e-12)
    assert out["rollout_corr/frac_over"] == pytest.approx(np.mean((rho > cap) | (rho < 1 / cap)), rel=1e-12)
    # identical policies: no mismatch at all
    same = mismatch_metrics(learner, learner.clone(), mask, cap)
    assert same["rollout_corr/kl"] == 0 and same["rollout_corr/max_abs_diff"] == 0 and same["rollout_corr/frac_over"] == 0


@pytest.mark.parametrize("mode", ["tis", "mis", "none"])
def test_correction_weights_each_tokens_policy_gradient(mode):
    """One on-policy pass (ratio 1, no clipping), token-mean: dL/dlogp_t = -w_t A_t / N, with w_t from numpy."""
    learner, engine, mask = _case(seed=5, spread=1.2)
    algo = resolve(AlgoConfig(name="grpo", kl_coef=0.0, loss_agg="token-mean"))
    adv = torch.randn(learner.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    logp = learner.clone().requires_grad_(True)
    loss, metrics = rl_objective(logp, None, None, None, adv, mask, algo, kl_coef=0.0, engine_logp=engine,
                                 correction=mode, is_cap=2.0)
    loss.backward()
    rho = np.exp(learner.numpy() - engine.numpy())
    w = {"tis": np.minimum(rho, 2.0), "mis": np.where(rho <= 2.0, rho, 0.0), "none": np.ones_like(rho)}[mode]
    m = mask.numpy()
    expected = -(w * adv.numpy() * m) / m.sum()
    np.testing.assert_allclose(logp.grad.numpy(), expected, rtol=1e-9, atol=1e-15)
    assert "rollout_corr/kl" in metrics and metrics["rollout_corr/kl"] > 0
    if mode == "mis":
        assert metrics["rollout_corr/dropped_frac"] == pytest.approx((m * (rho > 2.0)).sum() / m.sum())


def test_a_missing_engine_logprob_counts_as_no_mismatch():
    learner, engine, mask = _case(seed=1, B=1, T=3)
    engine = learner.clone()
    engine[0, 1] = math.nan
    algo = resolve(AlgoConfig(name="grpo", kl_coef=0.0))
    _, metrics = rl_objective(learner.clone().requires_grad_(True), None, None, None, torch.ones_like(learner), mask,
                              algo, kl_coef=0.0, engine_logp=engine, correction="tis")
    assert metrics["rollout_corr/kl"] == 0 and metrics["rollout_corr/is_weight_mean"] == pytest.approx(1.0)
