"""Multi-turn, tool-using rollouts on a real vLLM CPU engine (actors/multiturn.py): trajectories are token-exact
(the ids trained on are the ids sampled plus the tool results' ids, never a re-tokenisation), the loss mask covers
the model's tokens exactly, and the turn cap and token budget hold. The model is the tiny one after a short warm
start on tool-using transcripts, so that it does call the calculator."""
from __future__ import annotations

import math

import pytest

from config import RolloutConfig
from config.envs import EnvConfig

ENV = EnvConfig(name="calculator", max_turns=3, max_tokens=160)


@pytest.fixture(scope="module")
def tool_model(cache_dir):
    """The tiny model after 300 warm-start steps on tool-using transcripts only (tasks/tools.py: transcript; the
    preset's warm start also answers half its rows straight away): it calls the calculator on every prompt and
    copies the numbers about half the time -- a model whose tool use these tests can rely on, on any CPU. Cached."""
    from envs.registry import make_env
    from tasks import tools
    from tasks.warm_start import warm_start
    from tinymodels import ensure_tiny_model

    rows = tools.make_rows(2000, seed=1000)
    return warm_start(ensure_tiny_model(cache_dir, "tiny", 0), rows, lambda r: tools.transcript(r)[len(r["prompt"]):],
                      300, cache_dir / "warm", tools=make_env(ENV).tools, log_every=0)


@pytest.fixture(scope="module")
def engine(tool_model):
    from actors.rollout import RolloutEngine

    e = RolloutEngine(tool_model, RolloutConfig(max_model_len=256, max_new_tokens=80, temperature=1.0,
                                                gpu_memory_utilization=0.2, kv_cache_gib=1.0), enable_lora=False)
    yield e
    e.shutdown()


def segments(mask: list[int]) -> list[tuple[int, int, int]]:
    """(value, start, end) runs of the mask."""
    out, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((mask[start], start, i))
            start = i
    return out


def test_trajectories_are_token_exact_and_masked_to_the_model_tokens(engine):
    from envs.chat import tool_turn_text
    from envs.registry import make_env
    from tasks import tools

    tok = engine.tokenizer
    rows = tools.make_rows(12, seed=7, heldout=True)
    out = engine.generate_episodes(rows, ENV, n=2, seed=1234)
    samples = [s for g in out["samples"] for s in g]
    multi = [s for s in samples if s["turns"] >= 2]
    assert multi, f"no trajectory called a tool: {[s['text'] for s in samples][:4]}"
    checked = 0
    for i, group in enumerate(out["samples"]):
        prompt = out["prompt_token_ids"][i]
        for s in group:
            ids, mask, lps = s["token_ids"], s["loss_mask"], s["logprobs"]
            assert len(ids) == len(mask) == len(lps) <= ENV.max_tokens
            runs = segments(mask)
            assert runs[0][0] == 1 and [v for v, _, _ in runs] == [1, 0] * (len(runs) // 2) + [1] * (len(runs) % 2)
            assert all(math.isnan(lps[t]) == (mask[t] == 0) for t in range(len(ids)))
            # Replay the environment on the sampled turns: the ids between them are exactly the tool results'
            # text (envs/chat.py) tokenised on its own -- what the loop appended, nothing re-tokenised.
            env = make_env(ENV)
            messages = env.reset(rows[i])
            for v, a, b in runs:
                if v == 1:
                    text = tok.decode(ids[a:b], skip_special_tokens=True)
                    messages.append({"role": "assistant", "content": text})
                    res = env.step(text)
                else:
                    want = tok(tool_turn_text(tok, res.messages, env.tools), add_special_tokens=False).input_ids
                    assert ids[a:b] == want
                    messages += res.messages
            special = set(tok.all_special_ids)
            clean = all(x not in special for v, a, b in runs if v == 1 for x in ids[a:b - 1])
            if s["finish_reason"] == "stop" and s["turns"] >= 2 and clean:
                # The whole trajectory, decoded, is the chat template's rendering of the conversation it holds (where
                # the turns' text says all their tokens do: a special token sampled mid-turn drops out of the text,
                # which is why the trajectory is kept as ids and never rebuilt from text).
                full = tok.apply_chat_template(messages, tools=env.tools, tokenize=False)
                decoded = tok.decode(prompt + ids, skip_special_tokens=False)
                assert full.startswith(decoded) and full[len(decoded):].strip() == ""
                checked += 1
    assert checked, "no finished multi-turn trajectory to compare with the template"


def test_engine_scores_the_sampled_tokens_at_their_own_positions(engine):
    """The engine's sampling logprobs on the model's tokens equal its prompt logprobs of the whole trajectory at
    those positions (temperature 1: the sampled distribution is the model's). Aligned, the gap is kernel noise;
    shifted by one token it is the gap between different tokens' logprobs -- the test asks the first to be far
    below the second, both measured here."""
    from tasks import tools

    rows = tools.make_rows(6, seed=11, heldout=True)
    out = engine.generate_episodes(rows, ENV, n=2, seed=99)
    seqs, aligned, shifted = [], [], []
    pairs = [(out["prompt_token_ids"][i], s) for i, g in enumerate(out["samples"]) for s in g]
    seqs = [p + s["token_ids"] for p, s in pairs]
    scored = engine.prompt_logprobs(seqs)["logprobs"]
    for (p, s), lp in zip(pairs, scored):
        for j, (m, mu) in enumerate(zip(s["loss_mask"], s["logprobs"])):
            if m:
                t = len(p) + j - 1  # prompt_logprobs[k] scores token k + 1
                aligned.append(abs(lp[t] - mu))
                if t + 1 < len(lp):
                    shifted.append(abs(lp[t + 1] - mu))
    gap, control = sum(aligned) / len(aligned), sum(shifted) / len(shifted)
    assert gap < control / 20, (gap, control)


def test_turn_cap_and_token_budget_hold(engine):
    from dataclasses import replace

    from tasks import tools

    rows = tools.make_rows(8, seed=3, heldout=True)
    one = engine.generate_episodes(rows, replace(ENV, max_turns=1), n=2, seed=5)
    for s in (s for g in one["samples"] for s in g):
        assert s["turns"] == 1 and 0 not in s["loss_mask"]  # no tool result is appended after the last turn
    short = engine.generate_episodes(rows, replace(ENV, max_tokens=24), n=2, seed=5)
    lens = [len(s["token_ids"]) for g in short["samples"] for s in g]
    assert max(lens) <= 24
    assert any(s["finish_reason"] == "length" for g in short["samples"] for s in g)


def test_the_panel_scores_tool_use_with_and_without_the_tool(engine, tool_model):
    """The evaluation panel's tool-use suite: whole trajectories in the calculator environment, final answers scored,
    then the same rows with no tool offered; the tool-use metrics ride along."""
    from config.evaluation import EvalConfig
    from evalpanel.panel import run_panel

    res = run_panel(tool_model, suites=["tool_use"], engine=engine, cfg=EvalConfig(limit=24))
    m = res["metrics"]
    assert res["n"]["tool_use/exact_match"] == res["n"]["tool_use/exact_match_no_tools"] == 24
    assert m["tool_use/used_frac"] > 0.5 and 0.0 <= m["tool_use/call_validity"] <= 1.0
    assert m["tool_use/used_frac_no_tools"] == 0.0 or m["tool_use/call_validity_no_tools"] == 0.0  # nothing to call
    assert m["tool_use/exact_match"] > m["tool_use/exact_match_no_tools"], m


@pytest.mark.parametrize("script,algo", [("grpo.py", "gspo"), ("ppo.py", "ppo")])
def test_pipelines_train_on_multiturn_trajectories(tmp_path, cache_dir, tool_model, script, algo):
    """config=tools-cpu end to end for two steps (GRPO family and PPO with its critic): the learner's pi_old on the
    model's tokens equals the engine's sampling logprobs to within the sync probe's tolerance calibrated in the same
    run -- tokens trained on at other positions than sampled would be off by nats -- and the tool metrics, and the
    held-out reward with and without the tool, are written."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    REPO = Path(__file__).resolve().parents[1]
    argv = [sys.executable, str(REPO / "pipelines" / script), "config=tools-cpu", f"algo.name={algo}", "train.steps=2",
            "train.prompts_per_step=4", "rollout.n_samples=4", "train.heldout_prompts=8", "progress=false",
            "tensorboard=false", f"runs_dir={tmp_path}", "run_name=t", f"cache_dir={cache_dir}",
            f"model.path={tool_model}", "data.warm_start_steps=0"]
    out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    for r in rows:
        assert r["tools/turns_mean"] >= 1 and 0 <= r["tools/call_validity"] <= 1 and "tools/used_frac" in r
        assert r["rollout_corr/kl"] < r["sync/tolerance"], r
    assert {"heldout_reward_end_without_tools", "heldout_reward_start_without_tools"} <= set(summary)
