"""The continual-learning methods' mechanisms, each checked against an independent computation or a crafted case:
InsCL's budget split and information-based selection, CPPO's categories and weights, COPR's target
distribution and Lagrange multiplier, replay, the stream builders and the scores of the accuracy matrix."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from config.loader import ConfigError


# -- InsCL -----------------------------------------------------------------------------------------------------
def test_inscl_budget_split_follows_the_distances_and_sums_to_the_budget():
    from llm_continual.inscl import split_budget

    assert split_budget([1.0, 2.0, 5.0], 16) == [2, 4, 10]  # exactly proportional
    d = np.array([0.3, 1.1, 0.7, 2.9])
    shares = split_budget(d, 23)
    assert sum(shares) == 23
    assert np.all(np.diff(np.array(shares)[np.argsort(d)]) >= 0)  # the farther the task, the larger its share
    exact = 23 * d / d.sum()
    assert np.all(np.abs(np.array(shares) - exact) < 1.0)  # rounding moves no share by a whole row
    assert split_budget([1.0, 1.0, 1.0], 10) in ([4, 3, 3], [3, 4, 3], [3, 3, 4])
    assert sum(split_budget([0.0, 0.0], 7)) == 7  # identical tasks: an even split, not a division by zero
    # A task holding fewer rows than its share hands the surplus to the others; the total is what exists.
    assert split_budget([10.0, 1.0], 10, capacity=[3, 100]) == [3, 7]
    assert split_budget([1.0, 1.0], 50, capacity=[5, 6]) == [5, 6]
    with pytest.raises(ValueError):
        split_budget([-1.0, 1.0], 4)


def test_wasserstein_of_a_translated_cloud_is_the_translation_length():
    from llm_continual.inscl import wasserstein

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 5))
    v = np.array([0.3, -0.4, 0.0, 1.2, 0.0])
    assert wasserstein(x, x) == pytest.approx(0.0, abs=1e-9)
    # Kantorovich-Rubinstein with f(z) = <z, v>/|v| bounds W1 below by |v|; the identity coupling attains it.
    assert wasserstein(x, x + v) == pytest.approx(float(np.linalg.norm(v)), rel=1e-6)


def test_inscl_gives_the_more_distant_past_task_more_replay_with_minilm_embeddings():
    from llm_continual.inscl import embed_instructions, plan_replay, wasserstein
    from llm_continual.streams import builtin_stream, instruction_text

    add, reverse, upper = builtin_stream("instruct", 3, 12, 2)
    texts = {t.name: [instruction_text(r) for r in t.train] for t in (add, reverse, upper)}
    emb = {n: embed_instructions(ts) for n, ts in texts.items()}
    assert emb["add"].shape == (12, 384) and np.allclose(np.linalg.norm(emb["add"], axis=1), 1.0)
    # Learning "upper" (a word task): "add" (arithmetic) lies farther than "reverse" (another word task).
    d_add, d_rev = wasserstein(emb["add"], emb["upper"]), wasserstein(emb["reverse"], emb["upper"])
    assert d_add > d_rev > 0
    rows, rep = plan_replay(emb["upper"], [(add.train, texts["add"], emb["add"]),
                                           (reverse.train, texts["reverse"], emb["reverse"])], budget=9)
    assert rep["distances"] == pytest.approx([d_add, d_rev])
    assert sum(rep["shares"]) == 9 == len(rows) and rep["shares"][0] > rep["shares"][1]
    assert sum(r["uid"].startswith("add:") for r in rows) == rep["shares"][0]


def test_instruction_information_prefers_rare_tags():
    from llm_continual.inscl import instruction_info, select_by_info

    texts = ["reply in json", "reply in json", "reply in json please", "reply in json about rivers", "reply in json"]
    info = instruction_info(texts)
    assert info[0] == info[1] == info[4] == 0.0  # every tag is in every instruction: nothing new
    assert info[2] == pytest.approx(math.log(5)) and info[3] == pytest.approx(2 * math.log(5))
    for seed in range(5):
        assert set(select_by_info(info, 2, seed)) == {2, 3}  # zero-information rows only when needed
    picked = select_by_info(info, 4, 0)
    assert len(set(picked)) == 4 and {2, 3} <= set(picked)


# -- CPPO ------------------------------------------------------------------------------------------------------
def test_cppo_categories_and_weights_on_a_crafted_batch():
    from llm_continual.cppo import CATEGORIES, categorize, weights

    # Four normal samples at the means, one per extreme corner of (reward, generation log-prob).
    rewards = torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0, 0.0, 1.0, 0.0])
    logps = torch.tensor([-1.0, -1.0, -1.0, -1.0, 0.0, 0.0, -2.0, -2.0])
    cat = categorize(rewards, logps, k=0.5)
    assert [CATEGORIES[c] for c in cat] == ["normal"] * 4 + ["high_performance", "overfitting", "high_variance", "noisy"]
    alpha, beta = weights(cat, low=0.5, high=1.5)
    assert alpha.tolist() == [1, 1, 1, 1, 1.5, 1.5, 1.5, 0.5]
    assert beta.tolist() == [1, 1, 1, 1, 1.5, 0.5, 0.5, 0.5]
    # A wider margin k: the same samples are no longer extreme.
    assert (categorize(rewards, logps, k=3.0) == 0).all()


def test_cppo_loss_scales_each_sample_by_its_weights():
    from llm_continual.cppo import cppo_loss, knowledge_retention

    torch.manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    prev = torch.randn(4, 3)
    rewards, groups = torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([0, 0, 1, 1])

    def grads(alpha, beta, kr):
        logp = (prev + 0.1 * torch.randn(4, 3, generator=torch.Generator().manual_seed(1))).requires_grad_()
        loss, _ = cppo_loss(logp, prev, mask, rewards, groups, torch.tensor(alpha), torch.tensor(beta), kr)
        loss.backward()
        return logp.grad

    g1 = grads([1.0, 1.0, 1.0, 1.0], [1.0] * 4, 0.0)
    g2 = grads([2.0, 1.0, 1.0, 1.0], [1.0] * 4, 0.0)
    assert torch.allclose(g2[0], 2 * g1[0]) and torch.allclose(g2[1:], g1[1:])  # alpha weights the policy term
    assert (g1 * (1 - mask)).abs().sum() == 0  # padding gets no gradient
    k1 = grads([1e-9] * 4, [1.0, 1.0, 1.0, 1.0], 1.0)
    k3 = grads([1e-9] * 4, [3.0, 1.0, 1.0, 1.0], 1.0)
    assert torch.allclose(k3[0], 3 * k1[0], atol=1e-6) and torch.allclose(k3[1:], k1[1:], atol=1e-6)
    assert knowledge_retention(prev, prev, mask).abs().sum() == 0
    assert (knowledge_retention(prev + 0.5, prev, mask) == 0.25).all()


# -- COPR ------------------------------------------------------------------------------------------------------
def test_copr_target_normalises_over_each_prompts_samples():
    from llm_continual.copr import fit_loss, optimal_target

    ref = torch.tensor([-3.0, -1.0, -2.0, -1.5, -0.5, -4.0, -2.5])
    r = torch.tensor([1.0, 0.0, 0.5, 0.2, 1.0, 0.0, 0.3])
    g = torch.tensor([2, 0, 2, 0, 0, 1, 1])  # unsorted groups of 2, 3 and 2 samples
    beta = 0.5
    t = optimal_target(ref, r, g, beta)
    for k in (0, 1, 2):
        sel = g == k
        assert t[sel].exp().sum().item() == pytest.approx(1.0, abs=1e-6)
        w = (ref[sel] + r[sel] / beta).exp()  # pi_ref(y) exp(r / beta), by hand
        assert torch.allclose(t[sel].exp(), w / w.sum(), atol=1e-6)
    # Z(x) cancels: shifting one prompt's reference log-probs leaves its target as it is.
    shifted = ref.clone()
    shifted[g == 1] += 7.0
    assert torch.allclose(optimal_target(shifted, r, g, beta), t, atol=1e-6)
    # The fit is zero exactly at the target (up to a per-prompt constant) and positive elsewhere.
    assert fit_loss(ref + r / beta + 3.0, t, g).item() == pytest.approx(0.0, abs=1e-6)
    logp = ref.clone().requires_grad_()
    loss = fit_loss(logp, t, g)
    loss.backward()
    assert loss.item() > 0
    assert (logp.grad[r == 1.0] < 0).all()  # descent raises the best-rewarded samples' log-probs


def test_copr_lagrange_multiplier_rises_while_the_old_constraint_is_violated():
    from llm_continual.copr import copr_loss, dual_update

    assert dual_update(0.0, 0.5, 0.1, 1.0) == pytest.approx(0.4)
    assert dual_update(0.2, 0.0, 0.1, 1.0) == pytest.approx(0.1)  # satisfied: lambda relaxes
    assert dual_update(0.05, 0.0, 0.1, 1.0) == 0.0  # projected onto lambda >= 0
    logp = torch.zeros(4, requires_grad=True)
    target = torch.log(torch.tensor([0.9, 0.1, 0.5, 0.5]))
    g = torch.tensor([0, 0, 1, 1])
    loss, l_old, m = copr_loss(logp, target, g, torch.tensor([False, False, True, True]), lam=2.0, epsilon=0.0)
    assert l_old == pytest.approx(0.0, abs=1e-6) and m["copr/fit_new"] > 0  # old prompts already fit: no pull
    _, none, _ = copr_loss(logp, target, g, torch.tensor([False] * 4), lam=2.0, epsilon=0.0)
    assert none is None


# -- replay, multistage ----------------------------------------------------------------------------------------
def test_uniform_replay_draws_the_share_from_every_past_task():
    from llm_continual.replay import replay_budget, uniform_replay

    past = [[{"uid": f"a{i}"} for i in range(30)], [{"uid": f"b{i}"} for i in range(10)]]
    assert replay_budget(40, 0.25) == 10
    got = uniform_replay(past, 12, seed=3)
    assert len(got) == 12 == len({r["uid"] for r in got}) and got == uniform_replay(past, 12, seed=3)
    assert len(uniform_replay(past, 100)) == 40


def test_multistage_conflicts_and_self_distilled_rows():
    from llm_continual.multistage import conflicts, self_distilled_rows

    assert conflicts(['{"answer": 3}', "Hello"], ['{"answer":  3}', "hello"]) == [False, False]
    assert conflicts(['{"answer": 3}'], ['{"answer": 4}']) == [True]
    rows = self_distilled_rows([[{"role": "user", "content": "q"}], [{"role": "user", "content": "r"}]],
                               ["own answer", "  "], ["t:train:0", "t:train:1"])
    assert rows == [{"uid": "t:train:0:self", "messages": [{"role": "user", "content": "q"},
                                                          {"role": "assistant", "content": "own answer"}]}]


# -- streams, users' data, method checks, scores ---------------------------------------------------------------
def test_builtin_streams():
    from llm_continual.streams import builtin_stream

    for stream, phase in (("cpt", "cpt"), ("instruct", "instruct"), ("instruct-domain", "instruct"), ("align", "align")):
        tasks = builtin_stream(stream, 3, 10, 4, seed=1)
        assert [t.phase for t in tasks] == [phase] * 3 and len({t.name for t in tasks}) == 3
        uids = [r["uid"] for t in tasks for r in t.train + t.test]
        assert len(uids) == len(set(uids)) == 42
        assert builtin_stream(stream, 3, 10, 4, seed=1)[0].train == tasks[0].train  # deterministic
    a = builtin_stream("align", 1, 5, 2)[0]
    for r in a.train:
        assert r["chosen"] == r["responses"][int(np.argmax(r["scores"]))] != r["rejected"]
    assert [t.name for t in builtin_stream("instruct", 1, 2, 1, names=["upper", "add"])] == ["upper", "add"]
    with pytest.raises(ValueError, match="no task"):
        builtin_stream("instruct", 1, 2, 1, names=["nope"])
    with pytest.raises(ValueError, match="has 3 tasks"):
        builtin_stream("instruct-domain", 4, 2, 1)


def test_users_files_become_a_stream_and_bad_rows_are_named(tmp_path, caplog):
    from llm_continual.user_streams import file_stream, memory_rows

    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"instruction": "Say hi", "output": "hi"}, {"messages": [{"role": "user", "content": "x"}]},
        *[{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(8)]]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "good", "rejected": "bad"}) + "\n"
                                              for i in range(5)))
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "some text"}) + "\n")
    with open(tmp_path / "a.jsonl", "a") as f:
        f.write(json.dumps({"text": "a stray pre-training row"}) + "\n")
    (a,) = file_stream([f"a={tmp_path / 'a.jsonl'}"], heldout_fraction=0.2)
    assert a.phase == "instruct" and len(a.train) + len(a.test) == 9  # the chat without an answer is skipped
    assert "a.jsonl line 2" in caplog.text and "assistant turn" in caplog.text
    assert "a.jsonl line 11: a cpt row in a task of instruct rows" in caplog.text
    (b,) = file_stream([f"b={tmp_path / 'b.jsonl'},{tmp_path / 'b.jsonl'}"])
    assert b.phase == "align" and len(b.test) == 5
    assert b.train[0]["prompt"] == [{"role": "user", "content": "q0"}] and b.train[0]["scores"] == [1.0, 0.0]
    with pytest.raises(ConfigError, match="mixes phases"):
        file_stream([f"a={tmp_path / 'a.jsonl'}", f"b={tmp_path / 'b.jsonl'}"])
    with pytest.raises(ConfigError, match="NAME=TRAIN"):
        file_stream([str(tmp_path / "a.jsonl")])
    with pytest.raises(ConfigError, match="does not exist"):
        file_stream(["x=/no/such/file.jsonl"])
    with pytest.raises(ConfigError, match="too few"):
        file_stream([f"t={tmp_path / 't.jsonl'}"])
    ((name, rows),) = memory_rows(["samples:arithmetic_chat.jsonl"], "instruct")
    assert rows and all(r["uid"].startswith(name) for r in rows)
    with pytest.raises(ConfigError, match="holds instruct rows"):
        memory_rows(["samples:arithmetic_chat.jsonl"], "align")


def test_methods_refuse_streams_and_models_they_do_not_fit():
    import config
    from llm_continual.methods import check_method

    assert check_method("cppo", "align", "qlora").name == "cppo"
    with pytest.raises(ConfigError, match="runs on align"):
        check_method("copr", "instruct", "qlora")
    with pytest.raises(ConfigError, match="model.finetune=full"):
        check_method("task_lora", "cpt", "full")
    assert check_method("seq_ft", "cpt", "qlora").finetune == "full"
    with pytest.raises(ConfigError, match="unknown method"):
        config.load(config.Config, "tiny-cpu", ["continual.methods=[replay,ewk]"])
    with pytest.raises(ConfigError, match="stream=files needs"):
        config.load(config.Config, "tiny-cpu", ["continual.stream=files"])


def test_task_scores_from_panel_metrics_and_suites_the_panel_reads(tmp_path):
    from evalpanel.suites import load_suites
    from llm_continual.evaluation import task_score, write_suites
    from llm_continual.report import method_row
    from llm_continual.streams import builtin_stream

    tasks = builtin_stream("align", 1, 4, 3) + builtin_stream("cpt", 1, 4, 3)
    suites = write_suites(tasks, tmp_path, "likelihood")
    loaded = load_suites([r for s in suites.values() for r in s.refs])
    assert {s.name for s in loaded} == {"prefer_json_chosen", "prefer_json_rejected", "arith_text"}
    assert all(len(s.rows) == 3 and s.spec.kind == "perplexity" for s in loaded)
    m = {"prefer_json_chosen/perplexity": 2.0, "prefer_json_rejected/perplexity": 8.0, "arith_text/perplexity": 4.0}
    assert task_score(suites["prefer_json"], m) == pytest.approx(math.log(4.0))
    assert task_score(suites["arith_text"], m) == pytest.approx(-math.log(4.0))
    gen = write_suites(builtin_stream("instruct", 1, 2, 2), tmp_path / "g", "generate")["add"]
    (suite,) = load_suites(gen.refs)
    assert suite.spec.kind == "generate" and "exact_match" in suite.spec.scorers and "answer" in suite.rows[0]
    row = method_row("m", [[1.0, 0.0], [0.5, 2.0]], [0.0, 0.1], {"heldout/perplexity": -3.0}, 1.0)
    assert row["OP"] == pytest.approx(1.25) and row["BWT"] == pytest.approx(-0.5) and row["FWT"] == pytest.approx(-0.1)
    assert row["Δ heldout/perplexity"] == -3.0
