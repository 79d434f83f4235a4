"""The policy-optimisation math, each piece against a hand-worked example and, where one exists, an independent
computation: a plain loop (GAE, returns, whitening), exact expectations (KL estimators), a second formula of the
same quantity (RLOO), finite differences of the objective (aggregation under micro-batching on a real tiny model)."""
import math

import pytest
import torch

from config import AlgoConfig, ConfigError, load, Config, LoraConfig
from learners.advantages import (ADV_ESTIMATORS, discounted_returns, gae_advantages, get_adv_estimator, group_relative,
                                 leave_one_out, masked_whiten, outcome_token_rewards, zero_variance_groups)
from learners.algorithms import ALGORITHMS, resolve
from learners.kl_control import AdaptiveKLController, adaptive_kl_update, make_kl_controller
from learners.policy_loss import aggregate, gspo_loss, kl_penalty, ppo_clip_loss
from learners.step import overlong_filter, rl_objective
from learners.value import explained_variance, value_loss

T = torch.tensor


def close(a, b, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------------ advantages

def test_group_estimators_by_hand():
    r = T([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    g = T([0, 0, 0, 0, 1, 1, 1, 1])
    s = math.sqrt(1 / 3)  # unbiased std of {1, 0, 0, 1}
    close(group_relative(r, g, True), [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0, 0, 0, 0])
    close(group_relative(r, g, False), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])  # Dr.GRPO
    # RLOO: 1 - (0 + 0 + 1) / 3 = 2/3; 0 - (1 + 0 + 1) / 3 = -2/3
    close(leave_one_out(r, g), [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0])
    assert zero_variance_groups(r, g).tolist() == [False] * 4 + [True] * 4


def test_rloo_equals_scaled_mean_baseline_and_a_single_sample_gets_zero():
    gen = torch.Generator().manual_seed(1)
    r = torch.randn(12, generator=gen)
    g = T([0] * 5 + [1] * 6 + [2])
    got = leave_one_out(r, g)
    for gid, size in ((0, 5), (1, 6)):
        sel = g == gid
        close(got[sel], size / (size - 1) * (r[sel] - r[sel].mean()))  # G/(G-1) (R - mean)
        for i in torch.nonzero(sel).flatten():  # and the definition, one sample at a time
            others = [r[j] for j in torch.nonzero(sel).flatten() if j != i]
            close(got[i], r[i] - sum(others) / len(others))
    assert got[-1] == 0


def test_outcome_rewards_put_the_score_on_the_last_token_and_the_kl_on_every_token():
    mask = T([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0.0]])
    kl = torch.full((3, 5), 0.5)
    r = outcome_token_rewards(T([2.0, -1.0, 3.0]), mask, kl, kl_coef=0.1)
    close(r, [[0, -0.05, -0.05, 1.95, 0], [0, 0, -1.05, 0, 0], [0, 0, 0, 0, 0]])


def test_reinforce_pp_by_hand():
    # Two answers (2 tokens, 1 token), scores 1 and 0, no KL: returns-to-go 1, 1, 0;
    # whitened over the 3 tokens: mean 2/3, unbiased std sqrt(1/3).
    mask = T([[1, 1.0], [1, 0.0]])
    r = outcome_token_rewards(T([1.0, 0.0]), mask)
    adv, _ = get_adv_estimator("reinforce_pp")(r, mask, T([0, 1]))
    s = math.sqrt(1 / 3)
    close(adv, [[(1 / 3) / s, (1 / 3) / s], [(-2 / 3) / s, 0.0]], tol=1e-4)
    # Baseline variant: subtract the group mean first (both in one group: mean 0.5), then whiten.
    adv_b, _ = get_adv_estimator("reinforce_pp_baseline")(r, mask, T([0, 0]))
    x = torch.tensor([0.5, 0.5, -0.5])
    want = (x - x.mean()) / x.std()
    close(adv_b, [[want[0], want[1]], [want[2], 0.0]], tol=1e-4)


def test_discounted_returns_and_whitening_against_plain_loops():
    gen = torch.Generator().manual_seed(2)
    lengths = [5, 1, 3]
    mask = torch.zeros(3, 7)
    for b, n in enumerate(lengths):
        mask[b, 1:1 + n] = 1
    r = torch.randn(3, 7, generator=gen) * mask
    G = discounted_returns(r, mask, gamma=0.9)
    for b, n in enumerate(lengths):
        run = 0.0
        for t in reversed(range(1, 1 + n)):
            run = r[b, t].item() + 0.9 * run
            close(G[b, t], run)
    w = masked_whiten(G, mask)
    vals = [G[b, t].item() for b in range(3) for t in range(7) if mask[b, t]]
    mu = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / (len(vals) - 1))
    for b in range(3):
        for t in range(7):
            close(w[b, t], (G[b, t].item() - mu) / sd if mask[b, t] else 0.0, tol=1e-4)


def test_gae_by_hand_and_the_ppo_estimator_against_a_plain_loop():
    r, v, m = T([[0.0, 0.0, 1.0]]), T([[0.5, 0.5, 0.5]]), torch.ones(1, 3)
    adv, ret = gae_advantages(r, v, m, gamma=1.0, lam=0.5)
    close(adv, [[0.125, 0.25, 0.5]])  # deltas 0, 0, 0.5; A2 = .5, A1 = .5*.5, A0 = .5*.25
    close(ret, [[0.625, 0.75, 1.0]])

    gen = torch.Generator().manual_seed(3)
    lengths = [6, 2, 4, 1]
    mask = torch.zeros(4, 8)
    for b, n in enumerate(lengths):
        mask[b, 2:2 + n] = 1
    scores, kl, values = torch.randn(4, generator=gen), torch.rand(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    tok_r = outcome_token_rewards(scores, mask, kl, 0.05)
    adv, ret = get_adv_estimator("gae")(tok_r, mask, T([0, 0, 1, 1]), values, gamma=0.99, lam=0.9)
    raw, flat = {}, []
    for b, n in enumerate(lengths):
        ts = list(range(2, 2 + n))
        last = 0.0
        for t in reversed(ts):
            nv = values[b, t + 1].item() if t + 1 in ts else 0.0
            last = tok_r[b, t].item() + 0.99 * nv - values[b, t].item() + 0.99 * 0.9 * last
            raw[b, t] = last
            close(ret[b, t], last + values[b, t].item(), tol=1e-4)
        flat += [raw[b, t] for t in ts]
    mu = sum(flat) / len(flat)
    sd = math.sqrt(sum((x - mu) ** 2 for x in flat) / (len(flat) - 1))
    for (b, t), a in raw.items():
        close(adv[b, t], (a - mu) / sd, tol=1e-4)
    assert torch.all(adv[mask == 0] == 0) and torch.all(ret[mask == 0] == 0)
    with pytest.raises(ValueError, match="needs the critic"):
        get_adv_estimator("gae")(tok_r, mask, T([0, 0, 1, 1]), None)


def test_every_registered_estimator_ignores_padding():
    gen = torch.Generator().manual_seed(4)
    mask = torch.zeros(4, 6)
    mask[:, 1:4] = 1
    r = outcome_token_rewards(torch.randn(4, generator=gen), mask)
    for name, fn in ADV_ESTIMATORS.items():
        adv, _ = fn(r, mask, T([0, 0, 1, 1]), torch.randn(4, 6, generator=gen))
        assert torch.all(adv[mask == 0] == 0), name
        assert torch.isfinite(adv).all(), name


# --------------------------------------------------------------------------------------------- losses and KL

def test_kl_estimators_by_hand_and_their_expectations_match_the_exact_kl():
    close(kl_penalty(T([-1.0]), T([-2.0]), "k1"), [1.0])
    close(kl_penalty(T([-1.0]), T([-2.0]), "k2"), [0.5])
    close(kl_penalty(T([-1.0]), T([-2.0]), "k3"), [math.exp(-1) - 1 + 1])
    # On a categorical, E_{x~p}[k1] = E_{x~p}[k3] = KL(p || q) exactly (k2 is biased, ~KL for close p, q).
    p = torch.softmax(T([0.3, -1.0, 2.0, 0.1, -0.4]), 0)
    q = torch.softmax(T([0.1, -0.7, 1.5, 0.5, -0.2]), 0)
    kl = (p * (p.log() - q.log())).sum()
    for est in ("k1", "k3"):
        close((p * kl_penalty(p.log(), q.log(), est)).sum(), kl)
    assert abs((p * kl_penalty(p.log(), q.log(), "k2")).sum() - kl) < 0.1 * kl
    assert torch.all(kl_penalty(p.log(), q.log(), "k3") >= 0)


def test_aggregation_modes_by_hand():
    loss = T([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = T([[1, 1, 1, 0], [1, 0, 0, 0.0]])
    close(aggregate(loss, mask, "token-mean"), 10 / 4)
    close(aggregate(loss, mask, "seq-mean-token-mean"), (6 / 3 + 4 / 1) / 2)
    close(aggregate(loss, mask, "seq-mean-token-sum-norm", norm_len=8), (6 / 8 + 4 / 8) / 2)
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(loss, mask, "mean")


def test_ppo_clip_decoupled_and_dual_clip_by_hand():
    m = torch.ones(1, 1)

    def l(ratio, a, **kw):
        loss, _ = ppo_clip_loss(T([[math.log(ratio)]]), T([[0.0]]), T([[a]]), m, **kw)
        return loss.item()

    assert l(1.5, 1.0) == pytest.approx(-1.2)                       # clipped at 1 + 0.2
    assert l(1.5, 1.0, clip_high=0.28) == pytest.approx(-1.28)      # DAPO's clip-higher
    assert l(0.5, -1.0) == pytest.approx(0.8)                       # clipped at 1 - 0.2
    assert l(0.5, -1.0, clip_low=0.6) == pytest.approx(0.5)         # inside a wider band: unclipped
    assert l(5.0, -1.0) == pytest.approx(5.0)                       # pessimistic branch: unbounded
    assert l(5.0, -1.0, dual_clip=3.0) == pytest.approx(3.0)        # dual clip bounds it at c |A|
    assert l(5.0, 1.0, dual_clip=3.0) == pytest.approx(-1.2)        # dual clip leaves A > 0 alone
    _, met = ppo_clip_loss(T([[math.log(1.5), math.log(0.5)]]), torch.zeros(1, 2), T([[1.0, -1.0]]), torch.ones(1, 2))
    assert met["clipfrac_high"] == 0.5 and met["clipfrac_low"] == 0.5 and met["clipfrac"] == 1.0


def test_gspo_sequence_ratio_by_hand_and_its_on_policy_gradient_is_grpos():
    # log-ratios 0.1 and 0.3 on two tokens: s = exp(0.2) = 1.2214 > 1 + 0.1 -> clipped to 1.1 for A = 1.
    logp, old = T([[0.1, 0.3, 9.0]]), torch.zeros(1, 3)
    mask = T([[1, 1, 0.0]])
    loss, met = gspo_loss(logp, old, torch.ones(1, 3), mask, clip_low=0.1, clip_high=0.1)
    assert loss.item() == pytest.approx(-1.1) and met["clipfrac_high"] == 1.0
    loss, _ = gspo_loss(logp, old, torch.ones(1, 3), mask, clip_low=0.5, clip_high=0.5)
    assert loss.item() == pytest.approx(-math.exp(0.2), rel=1e-6)
    # On-policy (old = logp), GSPO's gradient is A_i * mean_t grad log pi: GRPO's with seq-mean-token-mean.
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 5, generator=gen, requires_grad=True)
    mask = T([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0.0]])
    adv = torch.randn(3, 1, generator=gen).expand(3, 5)
    g1 = torch.autograd.grad(gspo_loss(x, x.detach(), adv, mask)[0], x)[0]
    g2 = torch.autograd.grad(ppo_clip_loss(x, x.detach(), adv, mask, loss_agg="seq-mean-token-mean")[0], x)[0]
    close(g1, g2)


def test_rl_objective_adds_the_kl_only_in_loss_mode_and_the_entropy_bonus():
    gen = torch.Generator().manual_seed(6)
    logp, ref = -torch.rand(2, 4, generator=gen), -torch.rand(2, 4, generator=gen)
    ent, adv, mask = torch.rand(2, 4, generator=gen), torch.randn(2, 4, generator=gen), torch.ones(2, 4)
    grpo = resolve(AlgoConfig(name="grpo", kl_coef=0.1, entropy_coef=0.01))
    base, _ = rl_objective(logp, None, None, None, adv, mask, grpo)
    full, met = rl_objective(logp, ent, None, ref, adv, mask, grpo)
    want = base + 0.1 * aggregate(kl_penalty(logp, ref, "k3"), mask, "seq-mean-token-mean") \
        - 0.01 * aggregate(ent, mask, "seq-mean-token-mean")
    close(full, want)
    rloo = resolve(AlgoConfig(name="rloo", kl_coef=0.1))  # KL is a reward penalty there, not a loss term
    a, _ = rl_objective(logp, None, None, ref, adv, mask, rloo)
    b, _ = rl_objective(logp, None, None, None, adv, mask, rloo)
    close(a, b)


def test_overlong_filter_zeroes_truncated_rows_only():
    mask = torch.ones(3, 4)
    close(overlong_filter(mask, T([False, True, False])), [[1] * 4, [0] * 4, [1] * 4])


# ------------------------------------------------------------------------------------------------ value, KL ctl

def test_clipped_value_loss_by_hand():
    loss, met = value_loss(T([[1.5]]), T([[1.0]]), T([[2.0]]), torch.ones(1, 1), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * 0.8 ** 2) and met["vf_clipfrac"] == 1.0  # V_clip = 1.2
    loss, met = value_loss(T([[1.1]]), T([[1.0]]), T([[2.0]]), torch.ones(1, 1), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * 0.9 ** 2) and met["vf_clipfrac"] == 0.0  # inside the band
    loss, _ = value_loss(T([[1.5]]), T([[1.0]]), T([[2.0]]), torch.ones(1, 1), clip=0.0)
    assert loss.item() == pytest.approx(0.5 * 0.5 ** 2)
    ret, mask = T([[1.0, 2.0, 3.0, 9.0]]), T([[1, 1, 1, 0.0]])
    assert explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 4), 2.0), ret, mask) == pytest.approx(0.0)


def test_kl_controllers():
    assert adaptive_kl_update(0.1, 12.0, 6.0, 1000, 100) == pytest.approx(0.1 * 1.02)   # error clipped at +0.2
    assert adaptive_kl_update(0.1, 3.0, 6.0, 1000, 100) == pytest.approx(0.1 * 0.98)    # error clipped at -0.2
    assert adaptive_kl_update(0.1, 6.6, 6.0, 1000, 100) == pytest.approx(0.1 * 1.01)    # e = 0.1
    fixed = make_kl_controller("fixed", 0.05)
    assert fixed.update(100.0, 64) == 0.05
    # Closed loop on a toy where the policy's KL falls as beta rises (KL = 1 / beta): beta settles where KL = target.
    ctl = make_kl_controller("adaptive", 0.05, target=4.0, horizon=200)
    assert isinstance(ctl, AdaptiveKLController)
    for _ in range(400):
        ctl.update(1.0 / ctl.value, 64)
    assert 1.0 / ctl.value == pytest.approx(4.0, rel=0.05)
    with pytest.raises(ValueError, match="adaptive"):
        make_kl_controller("pid", 0.1)


# ------------------------------------------------------------------------------------------- names and config

def test_algorithms_resolve_to_their_defaults_and_user_keys_win():
    dapo = resolve(load(Config, "tiny-cpu", ["algo.name=dapo"]).algo, max_new_tokens=16)
    assert (dapo.clip_low, dapo.clip_high, dapo.loss_agg, dapo.dynamic_sampling, dapo.overlong_filter) == \
        (0.2, 0.28, "token-mean", True, True)
    gspo = resolve(AlgoConfig(name="gspo"))
    assert (gspo.policy_loss, gspo.clip_low, gspo.clip_high) == ("gspo", 3e-4, 4e-4)
    dr = resolve(AlgoConfig(name="dr_grpo"), max_new_tokens=24)
    assert (dr.adv_estimator, dr.loss_agg, dr.norm_len) == ("dr_grpo", "seq-mean-token-sum-norm", 24)
    assert resolve(AlgoConfig(name="rloo")).kl_estimator == "k1"
    assert resolve(AlgoConfig(name="rloo", kl_mode="loss")).kl_estimator == "k3"
    mine = resolve(load(Config, "tiny-cpu", ["algo.name=dapo", "algo.clip_high=0.4", "algo.dynamic_sampling=false"]).algo)
    assert mine.clip_high == 0.4 and mine.dynamic_sampling is False
    for name in ALGORITHMS:
        a = resolve(AlgoConfig(name=name))
        assert a.adv_estimator in ADV_ESTIMATORS and a.clip_low is not None and a.kl_mode in ("loss", "reward")


def test_bad_algorithm_keys_fail_with_the_choices():
    with pytest.raises(ValueError, match="algo.name='dappo'.*dapo"):
        resolve(AlgoConfig(name="dappo"))
    with pytest.raises(ValueError, match="algo.adv_estimator='gea'"):
        resolve(AlgoConfig(name="grpo", adv_estimator="gea"))
    with pytest.raises(ValueError, match="algo.loss_agg"):
        resolve(AlgoConfig(name="grpo", loss_agg="sum"))
    with pytest.raises(ConfigError, match="algo.gamma"):
        load(Config, "tiny-cpu", ["algo.gamma=1.5"])
    with pytest.raises(ConfigError, match="algo.kl_mode"):
        load(Config, "tiny-cpu", ["algo.kl_mode=both"])


# ------------------------------------------------------------------------------ the update on a real tiny model

@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batch_accumulation_gives_the_full_batch_update(tiny_model_dir, loss_agg):
    """policy_update weights micro-batches so that 3 micro-batches of 2 move the weights exactly as one of 6,
    for every aggregation (a wrong weight, e.g. averaging per-micro-batch token means, fails this)."""
    import copy

    from config import TrainConfig
    from learners.models import load_policy
    from learners.step import RLBatch, build_sequences, policy_update

    model, tok = load_policy(tiny_model_dir, "full")
    gen = torch.Generator().manual_seed(9)
    prompts = [torch.randint(5, 400, (n,), generator=gen).tolist() for n in (3, 5, 2, 4, 3, 6)]
    comps = [torch.randint(5, 400, (n,), generator=gen).tolist() for n in (1, 6, 3, 2, 7, 4)]
    ids, att, resp = build_sequences(prompts, comps, tok.pad_token_id)
    adv = torch.randn(6, 1, generator=gen) * resp
    algo = resolve(AlgoConfig(name="grpo", loss_agg=loss_agg, kl_coef=0.0, norm_len=8))
    deltas = []
    for micro in (6, 2):
        m = copy.deepcopy(model)
        before = [p.detach().clone() for p in m.parameters()]
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        train = TrainConfig(micro_batch_size=micro, max_grad_norm=1e9)
        torch.manual_seed(0)
        policy_update(m, opt, None, RLBatch(ids, att, resp, adv), algo, train)
        deltas.append(torch.cat([(p.detach() - b).flatten() for p, b in zip(m.parameters(), before)]))
    scale = deltas[0].abs().max()
    assert scale > 0
    # The two sum the same fp32 terms in other groupings (3 micro-batch gradients vs one): each element may differ
    # by a few roundings of the largest term (bound: 3 partial sums x eps x the update's largest magnitude, with a
    # factor 4 of headroom for the backward's own reordering). A wrong micro-batch weight is off by a factor, far above.
    atol = 12 * torch.finfo(torch.float32).eps * scale.item()
    torch.testing.assert_close(deltas[0], deltas[1], rtol=1e-4, atol=atol)


# ------------------------------------------------------------------------------ the lean logprob path

U32 = 2.0 ** -24  # unit roundoff of fp32 (half its epsilon)


def _gamma(n: int, u: float = U32) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative bound on a sum or dot product of n terms in floating point."""
    return n * u / (1 - n * u)


def _tiny_lora_with_a_live_adapter(tiny_model_dir, finetune="qlora"):
    from learners.models import load_policy

    model, tok = load_policy(tiny_model_dir, finetune, LoraConfig(r=8, alpha=16), "float32")  # full: no adapter
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:  # B = 0 would leave the adapter's gradient path untested
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model, tok


def _padded_batch(vocab: int):
    """Right-padded rows of differing length; the last two columns are padding in every row (the lean path cuts
    them), and the wanted positions are each row's completion."""
    gen = torch.Generator().manual_seed(11)
    lens, prompt = (22, 17, 20), 6
    L = max(lens) + 2
    ids = torch.zeros(3, L, dtype=torch.long)
    att = torch.zeros(3, L, dtype=torch.long)
    want = torch.zeros(3, L - 1)
    for i, n in enumerate(lens):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=gen)
        att[i, :n] = 1
        want[i, prompt - 1: n - 1] = 1
    return ids, att, want


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_lean_logprobs_equal_the_full_logits_path(tiny_model_dir, temperature):
    """sequence_logprobs with ``positions`` (hidden states, the head at those positions only, chunked
    logit_y - logsumexp) gives the plain path's [B, L-1] logprobs and entropies there, 0 elsewhere.

    Bound: both paths run the same backbone on the same tokens and differ only in how the head's matmul and the
    log-softmax are blocked. Per path, z = h W^T / T is off by at most dz = gamma_H max(|h| |W|^T) / T + u max|z|;
    logsumexp by dz + gamma_V + u max|lse|; so log p by 2 dz + gamma_V + u (max|lse| + max|log p|), and the entropy
    (sum_v p_v (lse - z_v)) by delta (H + 1) + gamma_V H with delta = 2 dz + gamma_V + 2u, the relative error of p.
    Two paths: twice each."""
    from learners.logprobs import sequence_logprobs

    model, _ = _tiny_lora_with_a_live_adapter(tiny_model_dir)
    ids, att, want = _padded_batch(model.config.vocab_size)
    model.train()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=att, output_hidden_states=True)
        lp_full, ent_full = sequence_logprobs(model, ids, att, True, temperature)
        lp_lean, ent_lean = sequence_logprobs(model, ids, att, True, temperature, positions=want)
    h = out.hidden_states[-1][:, :-1].double()
    W = model.get_output_embeddings().weight.double()
    H, V = W.shape[1], W.shape[0]
    z = out.logits[:, :-1].double() / temperature
    lse = torch.logsumexp(z, -1)
    dz = _gamma(H) * (h.abs() @ W.abs().T).amax().item() / temperature + U32 * z.abs().amax().item()
    lp_tol = 2 * (2 * dz + _gamma(V) + U32 * (lse.abs().amax() + lp_full.abs().amax()).item())
    delta = 2 * dz + _gamma(V) + 2 * U32
    ent_tol = 2 * (delta * (ent_full.amax().item() + 1) + _gamma(V) * ent_full.amax().item())
    w = want.bool()
    assert (lp_lean[w] - lp_full[w]).abs().max().item() <= lp_tol
    assert (ent_lean[w] - ent_full[w]).abs().max().item() <= ent_tol
    assert torch.equal(lp_lean[~w], torch.zeros_like(lp_lean[~w]))  # nothing computed off the wanted positions
    assert (lp_full[w] - lp_full[w].mean()).abs().max() > 100 * lp_tol  # the bound is far below what is compared


def test_lean_head_gradient_against_float64_autograd():
    """The lean path's backward (d log p / d h and d H / d h formed in the forward pass, in chunks) against autograd
    of the plain formula in float64, for loss = sum_n a_n log p_n + b_n H_n at T = 0.8, over several chunks.

    Bound, first order in u: the fp32 computation forms G_v = a (onehot_v - p_v) - b p_v (log p_v + H), then
    G W / T. With delta the relative error of p (as above) and |d log p_v| <= delta, |dH| <= delta (H + 1):
    |dG_v| <= |a| p_v delta + |b| p_v (delta |log p_v + H| + 2 delta + delta H) + u |G_v|, and the matmul adds
    gamma_V sum_v |G_v| |W_vk|; so |d grad_k| <= sum_v (|dG_v| + gamma_V |G_v|) |W_vk| / T + u |grad_k|."""
    import learners.logprobs as lpmod

    gen = torch.Generator().manual_seed(3)
    N, H, V, T = 37, 24, 50, 0.8
    h = (torch.randn(N, H, generator=gen) * 2).requires_grad_(True)
    W = torch.randn(V, H, generator=gen)
    y = torch.randint(0, V, (N,), generator=gen)
    a, b = torch.randn(N, generator=gen), torch.randn(N, generator=gen)
    chunk = lpmod.CHUNK_ELEMENTS
    lpmod.CHUNK_ELEMENTS = 8 * V  # 8 positions a chunk: five chunks, the last one short
    try:
        lp, ent = lpmod._HeadLogprob.apply(h, W, y, T, True)
    finally:
        lpmod.CHUNK_ELEMENTS = chunk
    (g_lean,) = torch.autograd.grad((a * lp + b * ent).sum(), h)

    h64 = h.detach().double().requires_grad_(True)
    logp = torch.log_softmax(h64 @ W.double().T / T, -1)
    p = logp.exp()
    ent64 = -(p * logp).sum(-1)
    lp64 = logp.gather(1, y[:, None]).squeeze(1)
    (g64,) = torch.autograd.grad((a.double() * lp64 + b.double() * ent64).sum(), h64)
    torch.testing.assert_close(lp.double(), lp64.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(ent.double(), ent64.detach(), rtol=0, atol=1e-5)

    with torch.no_grad():
        z = h64 @ W.double().T / T
        dz = _gamma(H) * (h64.abs() @ W.double().abs().T).amax(-1, keepdim=True) / T + U32 * z.abs().amax(-1, keepdim=True)
        delta = 2 * dz + _gamma(V) + 2 * U32
        Hn = ent64[:, None]
        onehot = torch.nn.functional.one_hot(y, V).double()
        A, Bc = a.double()[:, None], b.double()[:, None]
        G = A * (onehot - p) - Bc * p * (logp + Hn)
        dG = A.abs() * p * delta + Bc.abs() * p * delta * ((logp + Hn).abs() + 2 + Hn) + U32 * G.abs()
        bound = (dG + _gamma(V) * G.abs()) @ W.double().abs() / T + U32 * g64.abs()
    err = (g_lean.double() - g64).abs()
    assert (err <= bound).all(), (err / bound).max()
    assert g64.abs().max() > 100 * bound.max()  # a wrong sign, factor or missing term fails by far


@pytest.mark.parametrize("finetune", ["lora", "full"])  # full: the tied head trains too (the chunked-autograd branch)
def test_lean_gradients_equal_the_plain_path_in_float64(tiny_model_dir, finetune):
    """The whole model: LoRA gradients of a GRPO-like loss through the lean path equal those through the plain
    full-logits path. In float64 (finetune=lora, the model cast to double) so that a worst-case bound is still
    tight: the longest chain of accumulations behind one gradient entry is at most n = L (H + V + I) x layers terms,
    and Higham's gamma_n (u = 2^-53) bounds each ordering's error relative to the largest entry, so two orderings
    differ by at most 2 gamma_n max|grad|."""
    from learners.logprobs import sequence_logprobs

    model, _ = _tiny_lora_with_a_live_adapter(tiny_model_dir, finetune)
    model.double()
    ids, att, want = _padded_batch(model.config.vocab_size)
    adv = torch.randn(3, 1, generator=torch.Generator().manual_seed(2)).double() * want.double()
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    grads = []
    for positions in (None, want):
        lp, ent = sequence_logprobs(model, ids, att, True, 0.8, positions=positions, entropy_grad=True)
        loss = -(adv * torch.exp(lp - lp.detach()) * want).sum() - 0.01 * (ent * want).sum()
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    c = model.config
    n = ids.shape[1] * (c.hidden_size + c.vocab_size + c.intermediate_size) * c.num_hidden_layers
    bound = 2 * _gamma(n, 2.0 ** -53) * grads[0].abs().max().item()
    assert (grads[0] - grads[1]).abs().max().item() <= bound
    assert grads[0].abs().max().item() > 1e6 * bound


def _grouped_batch(vocab: int):
    """GRPO-shaped rows: 3 prompts of differing length x 3 completions of differing length, right-padded, the last
    column padding everywhere; one row's wanted positions have a hole (a tool result in a multi-turn sample)."""
    from learners.step import build_sequences

    gen = torch.Generator().manual_seed(13)
    P, C = [], []
    for plen in (5, 9, 7):
        prompt = torch.randint(3, vocab, (plen,), generator=gen).tolist()
        for clen in (6, 3, 8):
            P.append(prompt)
            C.append(torch.randint(3, vocab, (clen,), generator=gen).tolist())
    ids, att, want = build_sequences(P, C, 0)
    pad = torch.zeros(ids.shape[0], 1, dtype=ids.dtype)
    ids, att, want = torch.cat([ids, pad], 1), torch.cat([att, pad], 1), torch.cat([want, pad.float()], 1)
    want[2, 5 + 2: 5 + 5] = 0  # row 2 (prompt 5, completion 8): completion tokens 3-5 not the model's
    return ids, att, want


def _norm_in_input_dtype(monkeypatch) -> None:
    """Qwen3RMSNorm's formula in the input's dtype (transformers computes it in float32 whatever the model's dtype,
    which would round a float64 test's gradients through every norm to float32)."""
    import transformers.models.qwen3.modeling_qwen3 as q3

    def norm_in_input_dtype(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(q3.Qwen3RMSNorm, "forward", norm_in_input_dtype)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_shared_prompt_pass_equals_whole_rows_in_float64(tiny_model_dir, finetune, monkeypatch):
    """The lean path runs each distinct prompt once and its group's completions on its keys and values
    (learners/logprobs.py: _shared_prompt_states): logprobs, entropies and every trained weight's gradient equal
    those of running every row whole. Bound as for the gradients above (two orderings of the same float64 sums:
    2 gamma_n of the largest entry).

    transformers' Qwen3RMSNorm computes in float32 whatever the model's dtype, so in a float64 model every gradient
    through a norm is rounded to float32 -- where the shared pass rounds a group's summed gradient once and whole
    rows round each row's (relative differences of about 4e-8 here, nothing the logic does). The test therefore
    runs the same norm formula in the input's dtype, so that the float64 bound holds for everything else."""
    import learners.logprobs as lpmod

    _norm_in_input_dtype(monkeypatch)
    model, _ = _tiny_lora_with_a_live_adapter(tiny_model_dir, finetune)
    model.double()
    ids, att, want = _grouped_batch(model.config.vocab_size)
    adv = torch.randn(ids.shape[0], 1, generator=torch.Generator().manual_seed(2)).double() * want.double()
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    ran = []
    shared = lpmod._shared_prompt_states
    outs = []
    for share in (True, False):
        monkeypatch.setattr(lpmod, "_shared_prompt_states",
                            (lambda *a: ran.append(shared(*a)) or ran[-1]) if share else (lambda *a: None))
        lp, ent = lpmod.sequence_logprobs(model, ids, att, True, 0.8, positions=want, entropy_grad=True)
        loss = -(adv * torch.exp(lp - lp.detach()) * want).sum() - 0.01 * (ent * want).sum()
        outs.append((lp.detach(), ent.detach(), torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])))
    assert len(ran) == 1 and ran[0] is not None  # the shared pass ran (3 prompts for 9 rows)
    c = model.config
    n = ids.shape[1] * (c.hidden_size + c.vocab_size + c.intermediate_size) * c.num_hidden_layers
    for a, b in zip(outs[0], outs[1]):
        bound = 2 * _gamma(n, 2.0 ** -53) * b.abs().max().item()
        assert (a - b).abs().max().item() <= bound
        assert b.abs().max().item() > 1e6 * bound
    w = want.bool()
    assert torch.equal(outs[0][0][~w], torch.zeros_like(outs[0][0][~w]))


@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_streamed_logprobs_equal_whole_rows_in_float64(tiny_model_dir, temperature, monkeypatch):
    """Completions scored a chunk at a time as an engine samples them (learners/logprobs.py: StreamingLogprobs) --
    chunks of uneven size, a row that ends early, a row with no tokens in a chunk, prompts of differing length --
    give each token the logprob of scoring the finished rows whole (the learner's reference pass), within the float64
    bound of two orderings of the same sums (2 gamma_n of the largest entry), with the norm in the input's dtype as
    above."""
    from learners.logprobs import StreamingLogprobs, sequence_logprobs
    from learners.step import build_sequences

    _norm_in_input_dtype(monkeypatch)
    model, _ = _tiny_lora_with_a_live_adapter(tiny_model_dir, "lora")
    model.double().eval()
    g = torch.Generator().manual_seed(3)
    V, n = model.config.vocab_size, 3
    prompts = [torch.randint(3, V, (k,), generator=g).tolist() for k in (7, 4, 9)]
    lengths = [11, 11, 5, 11, 8, 11, 1, 11, 11]       # rows end at different times (one after its first token)
    comps = [torch.randint(3, V, (k,), generator=g).tolist() for k in lengths]
    s = StreamingLogprobs(model, temperature, pad_id=0)
    s.begin(prompts, n)
    done = 0
    for step, c in enumerate((2, 1, 4, 0, 3, 1)):      # tokens per row per chunk, as the engine streams them
        new = [row[done:done + c] if r != 4 or step != 2 else [] for r, row in enumerate(comps)]
        if step == 3:                                  # row 4 skipped chunk 2: it gets those tokens now
            new[4] = comps[4][done - 4:done]
        s.extend(new)
        done += c
    res = s.result()
    assert res["token_ids"] == comps
    ids, att, resp = build_sequences([p for p in prompts for _ in range(n)], comps, 0)
    whole = sequence_logprobs(model, ids, att, temperature=temperature, positions=resp)
    ref = [whole[r][resp[r].bool()].tolist() for r in range(len(comps))]
    c = model.config
    N = ids.shape[1] * (c.hidden_size + c.vocab_size + c.intermediate_size) * c.num_hidden_layers
    top = max(abs(x) for row in ref for x in row)
    bound = 2 * _gamma(N, 2.0 ** -53) * top
    for a, b in zip(res["logprobs"], ref):
        assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) <= bound
    assert top > 1e6 * bound


def test_shared_prompt_pass_steps_aside_under_gradient_checkpointing(tiny_model_dir, monkeypatch):
    """Checkpointed decoder layers drop past_key_values in training (transformers' GradientCheckpointingLayer): the
    completions would be scored without their prompt. The shared pass is declined then, and the lean path computes
    exactly what it computes for whole rows (the same operations: equal to the last bit)."""
    import learners.logprobs as lpmod

    model, _ = _tiny_lora_with_a_live_adapter(tiny_model_dir)
    ids, att, want = _grouped_batch(model.config.vocab_size)
    model.train()
    shared = lpmod._shared_prompt_states
    with monkeypatch.context() as m, torch.no_grad():
        m.setattr(lpmod, "_shared_prompt_states", lambda *a: None)
        whole = lpmod.sequence_logprobs(model, ids, att, positions=want)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        decoder = model.get_base_model().get_decoder()
        n = ids.shape[1] - 1  # the lean path's cut: the last column is padding everywhere
        assert shared(decoder, ids[:, :n], att, want[:, : n - 1].bool()) is None
        lp = lpmod.sequence_logprobs(model, ids, att, positions=want)
    finally:
        model.gradient_checkpointing_disable()
    assert lp.requires_grad and torch.equal(lp.detach(), whole)


def test_entropy_only_logged_has_no_graph(tiny_model_dir):
    """algo.entropy_coef = 0: the entropy is a number for the logs, with no autograd graph behind it."""
    from learners.logprobs import sequence_logprobs

    model, _ = _tiny_lora_with_a_live_adapter(tiny_model_dir)
    ids, att, want = _padded_batch(model.config.vocab_size)
    model.train()
    for positions in (None, want):
        lp, ent = sequence_logprobs(model, ids, att, True, positions=positions, entropy_grad=False)
        assert lp.requires_grad and not ent.requires_grad and ent.grad_fn is None
        lp, ent = sequence_logprobs(model, ids, att, True, positions=positions, entropy_grad=True)
        assert ent.requires_grad


def test_one_update_per_batch_takes_no_old_logprob_pass(tiny_model_dir):
    """GRPO with one minibatch and one epoch: prepare_batch computes no pi_old (rho = exp(logp - logp.detach()));
    the reference logprobs exist at the response positions only. Two epochs need pi_old."""
    from config import TrainConfig
    from learners.step import needs_old_logprobs, prepare_batch

    model, tok = _tiny_lora_with_a_live_adapter(tiny_model_dir)
    algo = resolve(AlgoConfig(name="grpo", kl_coef=0.02))
    calls = []

    def ref_fn(ids, att, positions):
        calls.append(positions)
        return torch.zeros(ids.shape[0], ids.shape[1] - 1)

    prompts, comps = [[5, 6, 7], [5, 6, 7]], [[8, 9], [10, 11, 12]]
    for epochs, wants_old in ((1, False), (2, True)):
        train = TrainConfig(epochs=epochs)
        assert needs_old_logprobs(algo, train, 0.02) is wants_old
        batch, _ = prepare_batch(model, prompts, comps, [1.0, 0.0], [0, 0], algo, train, tok.pad_token_id, 0.02, ref_fn)
        assert (batch.old_logp is not None) is wants_old
        assert torch.equal(calls[-1], batch.response_mask)
        if wants_old:
            assert torch.equal(batch.old_logp[batch.response_mask == 0], torch.zeros(int((batch.response_mask == 0).sum())))
            assert (batch.old_logp[batch.response_mask > 0] < 0).all()
