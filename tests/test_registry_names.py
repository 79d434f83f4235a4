"""One place for each name and each default of the RL algorithms.

- The registries (learners/algorithms.py ALGORITHMS, learners/advantages.py ADV_ESTIMATORS, learners/policy_loss.py
  POLICY_LOSSES and AGGREGATIONS) are the source of the names: the places that still write names down -- the table
  in docs/algorithms/index.md and its command line, the table in learners/algorithms.py's docstring, the family
  pipelines/grpo.py's docstring lists, any name list in AlgoConfig's docstrings -- are parsed here and compared
  with them (each row's clip, aggregation and KL with the resolved config, too); the bench reads them.
- An estimator or a loss gets its hyperparameters from the config by its signature: a toy estimator and a toy loss,
  each with a knob of its own, registered here and driven through the config and the learner's functions.
- None is the one spelling of "use the default" in AlgoConfig; "" and 0 are refused with the key named.
- The two KL quantities have two metric names: kl_loss (KL(pi_theta || ref), the loss term) and kl_reward
  (KL(pi_old || ref), the reward penalty).
"""
from __future__ import annotations

import ast
import importlib.util
import math
import re
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from config import AlgoConfig, Config, ConfigError, load
from learners.advantages import ADV_ESTIMATORS, register_adv_est
from learners.algorithms import ALGORITHMS, hyperparameters, needs_critic, resolve, script_for
from learners.policy_loss import AGGREGATIONS, POLICY_LOSSES, aggregate, kl_penalty, register_policy_loss
from learners.step import compute_advantages, rl_objective

REPO = Path(__file__).resolve().parents[1]
CRITIC_FREE = [n for n in ALGORITHMS if not needs_critic(n)]


# ------------------------------------------------------------------------------- the names written in docs

def _table_rows(text: str, header_first_cell: str) -> list[list[str]]:
    """The cells of each body row of the markdown table whose header starts with ``| header_first_cell |``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\s*\|\s*{header_first_cell}\s*\|", line))
    rows = []
    for line in lines[start + 2:]:  # past the header and its |---| line
        if not line.strip().startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _check_row(name: str, ratio: str, agg: str, kl: str) -> None:
    """A table row's 'token, 0.2 / 0.28' | 'token-mean' | 'k3 in the loss' against the resolved algorithm."""
    a = resolve(AlgoConfig(name=name))
    level, clips = (s.strip() for s in ratio.split(","))
    assert {"token": "ppo_clip", "sequence": "gspo"}[level] == a.policy_loss, name
    low, high = (float(x) for x in clips.split("/"))
    assert (low, high) == (a.clip_low, a.clip_high), name
    assert agg == a.loss_agg, name
    estimator, mode = kl.split()[0], ("reward" if "reward" in kl else "loss")
    assert (estimator, mode) == (a.kl_estimator, a.kl_mode), name


def test_docs_index_lists_every_algorithm_with_its_resolved_defaults():
    text = (REPO / "docs" / "algorithms" / "index.md").read_text()
    rows = _table_rows(text, "algorithm")
    assert [r[0] for r in rows] == list(ALGORITHMS)
    for name, page, _adv, ratio, agg, kl in rows:
        _check_row(name, ratio, agg, kl)
        link = re.fullmatch(r"\[(.+)\]\((.+)\)", page)
        assert link and (REPO / "docs" / "algorithms" / link.group(2)).is_file(), (name, page)
    # the command line of the grpo.py family: algo.name=a|b|c
    family = re.search(r"pipelines/grpo\.py algo\.name=([\w|]+)", text).group(1).split("|")
    assert family == CRITIC_FREE


def test_the_algorithms_module_table_is_its_registry():
    import learners.algorithms as algorithms

    rows = _table_rows(algorithms.__doc__, "name")
    assert [r[0] for r in rows] == list(ALGORITHMS)
    for name, _adv, ratio, agg, kl in rows:
        _check_row(name, ratio, agg, kl)


def test_the_grpo_pipeline_docstring_names_its_family():
    """pipelines/grpo.py runs every algorithm without a critic; any names its docstring gives are exactly those,
    and any algo.name=X example is a registered name that script runs."""
    doc = ast.get_docstring(ast.parse((REPO / "pipelines" / "grpo.py").read_text()))
    assert doc and "algo.name=" in doc
    for example in re.findall(r"algo(?:\.name)?=(\w+)", doc):
        assert example in CRITIC_FREE, example
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if "critic-free family" in line:
            listed = re.findall(r"[a-z_]+", lines[i + 1].split("#", 1)[-1])
            if set(listed) & set(ALGORITHMS):  # the line may list the family or point to the registry instead
                assert listed == CRITIC_FREE, listed


def _algo_field_docs() -> dict[str, str]:
    tree = ast.parse((REPO / "config" / "schema.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "AlgoConfig")
    docs, body = {}, cls.body
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[stmt.target.id] = nxt.value.value
    return docs


def test_algo_config_docstrings_list_no_stale_names():
    """AlgoConfig points to the registries instead of copying them; a name list ('a | b | c') written into a
    field's docstring must be its registry's, in full."""
    docs = _algo_field_docs()
    assert set(docs) == {f.name for f in fields(AlgoConfig)}  # every field has its docstring, and the parse sees them
    registry = {"name": list(ALGORITHMS), "adv_estimator": list(ADV_ESTIMATORS), "policy_loss": list(POLICY_LOSSES),
                "loss_agg": list(AGGREGATIONS)}
    for key, names in registry.items():
        for run in re.findall(r"[\w-]+(?:\s*\|\s*[\w-]+)+", docs[key]):
            assert sorted(x.strip() for x in run.split("|")) == sorted(names), (key, run)
    # the names the docstrings do mention are registered: 'ppo_clip: token ratio', 'token-mean unless ...'
    assert set(re.findall(r"(\w+): \w+ ratio", docs["policy_loss"])) <= set(POLICY_LOSSES)
    assert set(re.findall(r"\b[a-z]+(?:-[a-z]+)+\b", docs["loss_agg"])) <= set(AGGREGATIONS)
    assert re.findall(r"(\w+): \w+ ratio", docs["policy_loss"])  # the parse above sees them


def test_the_bench_runs_every_registered_algorithm_with_its_script():
    spec = importlib.util.spec_from_file_location("algorithm_runs", REPO / "bench" / "algorithm_runs.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.ALGOS == list(ALGORITHMS)
    assert script_for("ppo") == "pipelines/ppo.py" and all(script_for(n) == "pipelines/grpo.py" for n in CRITIC_FREE)
    assert all((REPO / script_for(n)).is_file() for n in ALGORITHMS)


def test_a_wrong_name_lists_the_registrys_choices():
    with pytest.raises(ConfigError) as e:
        resolve(load(Config, "tiny-cpu", ["algo.name=grpoo"]).algo)
    assert str(sorted(ALGORITHMS)) in str(e.value)
    with pytest.raises(ConfigError) as e:
        resolve(AlgoConfig(policy_loss="clip"))
    assert "algo.policy_loss='clip'" in str(e.value) and str(sorted(POLICY_LOSSES)) in str(e.value)


# ------------------------------------------------------------------ hyperparameters by signature, a toy of each

@pytest.fixture
def toy_estimator():
    """A registered estimator with a hyperparameter no AlgoConfig key has: A_{i,t} = toy_scale * R_i."""

    @register_adv_est("toy_scaled")
    def toy(token_rewards, mask, group_ids, values=None, *, toy_scale: float = 1.0, gamma: float = 1.0):
        r = (token_rewards * mask).sum(-1)
        return toy_scale * gamma * r[:, None] * mask, None

    yield "toy_scaled"
    del ADV_ESTIMATORS["toy_scaled"]


@pytest.fixture
def toy_loss():
    """A registered loss with a knob of its own and one config key: l = -toy_weight * rho * A, aggregated."""

    @register_policy_loss("toy_weighted")
    def toy(logp, old_logp, adv, mask, *, toy_weight: float, loss_agg: str = "token-mean"):
        return aggregate(-toy_weight * torch.exp(logp - old_logp) * adv, mask, loss_agg), {}

    yield "toy_weighted"
    del POLICY_LOSSES["toy_weighted"]


def test_an_estimator_gets_its_own_hyperparameter_from_the_config(toy_estimator):
    scores, groups = torch.tensor([1.0, 2.0]), torch.tensor([0, 0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # from the command line, through the loader and resolve, to the estimator
    algo = resolve(load(Config, "tiny-cpu", [f"algo.adv_estimator={toy_estimator}", "algo.params.toy_scale=3",
                                             "algo.gamma=0.5"]).algo)
    assert hyperparameters(ADV_ESTIMATORS[toy_estimator], algo) == {"toy_scale": 3, "gamma": 0.5}
    adv, _ = compute_advantages(scores, mask, groups, algo)
    torch.testing.assert_close(adv, torch.tensor([[1.5, 1.5, 0.0], [3.0, 0.0, 0.0]]))
    # without the param: the function's own default
    adv, _ = compute_advantages(scores, mask, groups, resolve(AlgoConfig(adv_estimator=toy_estimator)))
    torch.testing.assert_close(adv, torch.tensor([[1.0, 1.0, 0.0], [2.0, 0.0, 0.0]]))
    # an algorithm row can set it (a row added to the table, as a new algorithm would be)
    ALGORITHMS["toy"] = {"adv_estimator": toy_estimator, "params": {"toy_scale": 2.0}}
    try:
        assert resolve(AlgoConfig(name="toy")).params == {"toy_scale": 2.0}
        assert resolve(AlgoConfig(name="toy", params={"toy_scale": 5.0})).params == {"toy_scale": 5.0}  # the user wins
    finally:
        del ALGORITHMS["toy"]


def test_a_loss_gets_its_own_hyperparameter_and_a_missing_one_is_named(toy_loss):
    logp, adv, mask = torch.tensor([[-1.0, -2.0]]), torch.tensor([[1.0, 3.0]]), torch.ones(1, 2)
    algo = resolve(AlgoConfig(policy_loss=toy_loss, params={"toy_weight": 2.0}, kl_coef=0.0, loss_agg="token-mean"))
    loss, metrics = rl_objective(logp, None, None, None, adv, mask, algo)
    assert metrics["pg_loss"] == pytest.approx(-2.0 * (1.0 + 3.0) / 2)
    with pytest.raises(ConfigError, match=r"algo\.params\.toy_weight: required"):
        resolve(AlgoConfig(policy_loss=toy_loss))


def test_the_config_keys_reach_the_registered_estimators():
    """gamma, lam and norm_adv_by_std travel by name from the config to the estimators that declare them, and the
    learner's reduce to those that declare it: the result equals the estimator called by hand."""
    from learners.advantages import gae_estimator, outcome_token_rewards, reinforce_pp_advantages
    from learners.step import LocalReducer

    class TwoCopies(LocalReducer):
        """As if a second learner held an identical shard: every sum doubles (the whitening's n - 1 changes)."""

        def sum(self, x):
            return 2 * x

    gen = torch.Generator().manual_seed(3)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    scores, groups, values = torch.randn(4, generator=gen), torch.tensor([0, 0, 1, 1]), torch.randn(4, 4, generator=gen)
    tok = outcome_token_rewards(scores, mask)
    got, ret = compute_advantages(scores, mask, groups, resolve(AlgoConfig(name="ppo", gamma=0.9, lam=0.8)),
                                  values=values)
    want, want_ret = gae_estimator(tok, mask, groups, values, gamma=0.9, lam=0.8)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(ret, want_ret)
    algo = resolve(AlgoConfig(name="reinforce_pp", gamma=0.7))
    got = compute_advantages(scores, mask, groups, algo, reducer=TwoCopies())[0]
    torch.testing.assert_close(got, reinforce_pp_advantages(tok, mask, gamma=0.7, reduce=lambda t: 2 * t)[0])
    assert not torch.allclose(got, reinforce_pp_advantages(tok, mask, gamma=0.7)[0])  # so the reduce did arrive
    no_std = compute_advantages(scores, mask, groups, resolve(AlgoConfig(name="grpo", norm_adv_by_std=False)))[0]
    torch.testing.assert_close(no_std, compute_advantages(scores, mask, groups, resolve(AlgoConfig(name="dr_grpo")))[0])
    assert not torch.allclose(no_std, compute_advantages(scores, mask, groups, resolve(AlgoConfig(name="grpo")))[0])


def test_unknown_or_misplaced_params_are_refused_with_what_is_taken():
    with pytest.raises(ConfigError, match=r"algo\.params\.epz: neither adv_estimator 'grpo'.*\['clip_high'.*'eps'"):
        resolve(load(Config, "tiny-cpu", ["algo.params.epz=1e-4"]).algo)
    with pytest.raises(ConfigError, match=r"algo\.params\.clip_low: .*set algo\.clip_low=0\.1"):
        resolve(AlgoConfig(params={"clip_low": 0.1}))
    # a declared one passes, and reaches the GRPO estimator's std epsilon
    algo = resolve(load(Config, "tiny-cpu", ["algo.params.eps=0.5"]).algo)
    adv, _ = compute_advantages(torch.tensor([0.0, 1.0]), torch.ones(2, 1), torch.tensor([0, 0]), algo)
    want = 0.5 / (math.sqrt(0.5) + 0.5)  # (R - mean) / (std + eps), unbiased std of {0, 1}
    torch.testing.assert_close(adv, torch.tensor([[-want], [want]]))


# ----------------------------------------------------------------------------- one sentinel for the default

DEFAULTED = ("adv_estimator", "policy_loss", "loss_agg", "norm_len", "clip_low", "clip_high", "kl_estimator", "kl_mode",
             "norm_adv_by_std", "dynamic_sampling", "overlong_filter", "ptx_data", "critic_model", "critic_finetune")


def test_none_is_the_only_default_and_resolve_fills_it():
    # every "use the default" field is None by default; no field of AlgoConfig defaults to "" any more
    assert [f.name for f in fields(AlgoConfig) if f.default is None] == list(DEFAULTED)
    assert not [f.name for f in fields(AlgoConfig) if f.default == ""]
    docs = _algo_field_docs()
    assert all("null" in docs[k] for k in DEFAULTED), [k for k in DEFAULTED if "null" not in docs[k]]
    dr = resolve(AlgoConfig(name="dr_grpo"), max_new_tokens=24)
    assert (dr.adv_estimator, dr.policy_loss, dr.loss_agg, dr.norm_len, dr.clip_low, dr.kl_estimator, dr.kl_mode,
            dr.norm_adv_by_std, dr.dynamic_sampling) == \
        ("dr_grpo", "ppo_clip", "seq-mean-token-sum-norm", 24, 0.2, "k3", "loss", False, False)
    assert resolve(AlgoConfig(name="dr_grpo")).norm_len is None  # no budget given: L stays the padded length
    assert resolve(AlgoConfig(name="grpo", norm_len=8), max_new_tokens=24).norm_len == 8
    # what stays None after resolve has a consumer that reads None as its default (pipelines/ppo.py)
    ppo = resolve(AlgoConfig(name="ppo"))
    assert (ppo.critic_model, ppo.critic_finetune, ppo.ptx_data) == (None, None, None)


@pytest.mark.parametrize("override, key", [
    ("algo.adv_estimator=", "algo.adv_estimator"),
    ("algo.policy_loss=", "algo.policy_loss"),
    ("algo.loss_agg=''", "algo.loss_agg"),
    ("algo.ptx_data=", "algo.ptx_data"),
    ("algo.critic_model=", "algo.critic_model"),
    ("algo.norm_len=0", "algo.norm_len"),
])
def test_the_old_spellings_of_the_default_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: .*null"):
        load(Config, "tiny-cpu", [override])


def test_resolve_refuses_an_old_spelling_set_after_loading():
    algo = AlgoConfig(name="dr_grpo")
    algo.norm_len = 0  # written into the object, past the loader's check
    with pytest.raises(ConfigError, match=r"^algo\.norm_len: must be >= 1, got 0"):
        resolve(algo, max_new_tokens=24)
    algo = AlgoConfig()
    algo.loss_agg = ""
    with pytest.raises(ConfigError, match=r"^algo\.loss_agg: an empty string"):
        resolve(algo)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "config").glob("*.yaml")))
def test_every_preset_resolves(preset):
    cfg = load(Config, preset)
    a = resolve(cfg.algo, cfg.rollout.max_new_tokens)
    assert a.adv_estimator in ADV_ESTIMATORS and a.norm_len == cfg.rollout.max_new_tokens


# -------------------------------------------------------------------------------------- the KL metric names

def test_kl_loss_is_the_loss_term_on_pi_theta():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref, mask, adv = logp - 0.5, torch.tensor([[1.0, 1.0, 0.0]]), torch.zeros(1, 3)
    _, metrics = rl_objective(logp, None, None, ref, adv, mask, resolve(AlgoConfig(name="grpo", kl_coef=0.1)))
    assert metrics["kl_loss"] == pytest.approx(math.exp(-0.5) - 1 + 0.5)  # k3 with log r = -0.5 on every token
    assert "kl" not in metrics and "kl_reward" not in metrics
    # in reward mode the loss has no KL term, so no kl_loss
    _, metrics = rl_objective(logp, None, None, ref, adv, mask, resolve(AlgoConfig(name="rloo", kl_coef=0.1)))
    assert "kl_loss" not in metrics and "kl" not in metrics


def test_kl_reward_is_the_penalty_on_pi_old_before_the_update(tiny_model_dir):
    from config import TrainConfig
    from learners.models import load_policy
    from learners.step import batched_logprobs, prepare_batch

    model, tok = load_policy(tiny_model_dir, "full")
    prompts, comps = [[5, 6, 7], [5, 6, 7]], [[8, 9], [10, 11, 12]]

    def ref_fn(ids, att, positions):  # the reference: pi_old shifted by -0.5 nats on every response token
        return (batched_logprobs(model, ids, att, 8, positions=positions) - 0.5) * positions

    for name, want in (("rloo", {"kl_reward", "kl_seq"}), ("grpo", {"kl_seq"})):
        algo = resolve(AlgoConfig(name=name, kl_coef=0.1, kl_ctrl="adaptive"))  # adaptive: pi_old in both modes
        _, info = prepare_batch(model, prompts, comps, [1.0, 0.0], [0, 0], algo, TrainConfig(), tok.pad_token_id,
                                0.1, ref_fn)
        assert want <= set(info) and "kl" not in info and "kl_loss" not in info, (name, info)
        assert info["kl_seq"] == pytest.approx((2 * 0.5 + 3 * 0.5) / 2, abs=1e-5)  # k1 summed per response, mean
        if name == "rloo":
            assert info["kl_reward"] == pytest.approx(0.5, abs=1e-5)  # k1 = log pi_old - log pi_ref, token-mean
        else:
            assert "kl_reward" not in info
