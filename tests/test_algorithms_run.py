"""The algorithm family end to end on the real stack (tiny Qwen3, vLLM's CPU engine, Ray actors), on a tiny budget:

- DAPO's dynamic sampling loop on hand-made groups: which groups it keeps, how many rounds it draws, the cap;
- pipelines/ppo.py: a critic on the policy's own 4-bit base, GAE, 2 PPO epochs x 2 minibatches, the adaptive
  KL controller and the ptx loss run together, log their metrics, and the checkpoint holds the critic;
- pipelines/grpo.py algo=dapo (the short alias): dynamic sampling and overlong filtering in the loop, soft
  overlong punishment through the reward config.

That a short run of each algorithm raises held-out reward is shown by longer runs whose figures and commands are
in docs/algorithms/results.md (too slow for CI on 2 cores).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.preset=tiny", "data.warm_start_steps=0", "train.steps=2", "rollout.n_samples=4", "train.prompts_per_step=4",
        "rollout.max_new_tokens=8", "train.heldout_prompts=4", "progress=false", "tensorboard=false"]


def _run(script: str, tmp_path: Path, name: str, *extra: str) -> tuple[list[dict], dict]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, str(REPO / "pipelines" / script), *TINY, f"runs_dir={tmp_path}", f"run_name={name}",
                          *extra], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((run / "summary.json").read_text())


def test_dynamic_sampling_keeps_informative_groups_and_respects_the_cap():
    from pipelines.grpo import dynamic_sampling

    def groups(*rewards):
        return [{"id": i, "rewards": list(r)} for i, r in enumerate(rewards)]

    rounds = {1: groups([0, 0, 0, 0], [1, 0, 0, 0], [0.2, 0.2, 0.2, 0.2], [1, 1, 1, 1]),
              2: groups([0, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0])}
    drawn = []

    def draw(k):
        drawn.append(k)
        return rounds[k]

    first = groups([1, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 1])
    kept, stats = dynamic_sampling(first, draw, want=4, max_rounds=3)
    assert [g["rewards"] for g in kept] == [[0, 1, 0, 0], [1, 0, 1, 1], [1, 0, 0, 0], [0, 1, 1, 1]]
    assert drawn == [1, 2] and stats == {"sampling/groups_dropped": 6, "sampling/extra_rounds": 2, "sampling/groups_kept": 4}

    drawn.clear()
    kept, stats = dynamic_sampling(first, draw, want=4, max_rounds=1)  # the cap: trains on the 3 it has
    assert len(kept) == 3 and drawn == [1] and stats["sampling/extra_rounds"] == 1

    # one group kept, two data-parallel learners: the first dropped group tops the batch up
    one = groups([1, 1], [0, 1], [0, 0])
    kept, stats = dynamic_sampling(one, lambda k: groups([2, 2]), want=3, max_rounds=0, at_least=2)
    assert [g["rewards"] for g in kept] == [[0, 1], [1, 1]] and stats["sampling/groups_kept"] == 1

    flat = groups([1, 1], [0, 0])
    kept, stats = dynamic_sampling(flat, lambda k: groups([2, 2], [3, 3]), want=2, max_rounds=2)
    assert kept == flat and stats["sampling/groups_kept"] == 0 and stats["sampling/groups_dropped"] == 6


@pytest.mark.slow
def test_grpo_with_two_learners_and_two_engines(tmp_path):
    """cluster.learner.count=2, cluster.rollout.count=2 and cluster.reward.count=2 through pipelines/grpo.py: the
    learners form a gloo group (batch-whitened REINFORCE++ advantages over both shards), both engines sample and
    load every adapter, each engine passes the sync check against rank 0, two reward actors share the scoring
    (that the group updates like one learner is checked exactly in tests/test_data_parallel.py)."""
    rows, summary = _run("grpo.py", tmp_path, "dp", "algo=reinforce_pp", "cluster.num_cpus=3", "cluster.learner.count=2",
                         "cluster.rollout.count=2", "cluster.reward.count=2", "checkpoint.every=0")
    assert [r["adapter_version"] for r in rows] == [1, 2] and [r["rollout/adapter_version"] for r in rows] == [0, 1]
    assert all(r["sync/gap_mean"] <= r["sync/tolerance"] and r["actor/grad_norm"] > 0 for r in rows)
    assert summary["heldout_reward_end"] is not None and (tmp_path / "dp" / "adapters" / "v000002").exists()
    assert all(r["reward/failed_items"] == 0 and "reward/exact_answer" in r for r in rows)

    # a pipeline that drives one learner says so instead of leaving the second one idle
    out = subprocess.run([sys.executable, str(REPO / "pipelines" / "ppo.py"), "cluster.learner.count=2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "cluster.learner.count=2: pipelines/ppo.py" in out.stderr, out.stderr[-2000:]


@pytest.mark.slow
def test_ppo_pipeline_with_critic_adaptive_kl_and_ptx(tmp_path):
    # An untrained tiny model almost never answers right; a length term makes every batch's rewards (and so the
    # critic's returns) differ, so that both updates have something to fit.
    rows, summary = _run("ppo.py", tmp_path, "ppo", "algo.kl_ctrl=adaptive", "algo.kl_target=0.5", "algo.kl_horizon=10",
                         "algo.ptx_coef=0.1", "train.epochs=2", "train.mini_batches=2", "checkpoint.every=0",
                         "reward.scorers={exact_answer: 1.0, length: 1.0}", "reward.options={length: {max_len: 8, slack: 40}}")
    assert [r["step"] for r in rows] == [0, 1]
    for r in rows:
        for key in ("critic/value_loss", "critic/grad_norm", "actor/ptx_loss", "actor/pg_loss", "actor/kl_coef"):
            assert r[key] is not None and math.isfinite(r[key]), (key, r[key])
        assert r["critic/explained_var"] <= 1.0
        assert r["actor/ptx_loss"] > 0 and r["critic/grad_norm"] > 0
        assert r["sync/gap_mean"] <= r["sync/tolerance"]  # the engine serves what the learner trained
    # The first update starts from the reference (a fresh adapter): KL 0 < target, so beta must shrink.
    assert rows[0]["actor/kl_seq"] == 0.0
    assert rows[1]["actor/kl_coef"] < rows[0]["actor/kl_coef"]
    # A fresh value head starts at 0 (explained variance exactly 0); after one critic update it predicts something.
    assert rows[0]["critic/value_mean"] == 0.0 and rows[0]["critic/explained_var"] == 0.0
    assert rows[1]["critic/value_mean"] != 0.0
    assert summary["algo"] == "ppo" and summary["heldout_reward_end"] is not None
    ckpt = tmp_path / "ppo" / "checkpoints" / "step-000002"
    assert (ckpt / "critic_state.pt").exists() and (ckpt / "learner_state.pt").exists()


@pytest.mark.slow
def test_dapo_through_the_grpo_pipeline(tmp_path):
    rows, summary = _run("grpo.py", tmp_path, "dapo", "algo=dapo",
                         "reward.scorers={json_valid: 0.2, exact_answer: 1.0, overlong: 1.0}",
                         "reward.options={overlong: {max_len: 16, cache_len: 8}}", "checkpoint.every=0")
    assert summary["algo"] == "dapo"
    config = json.loads((tmp_path / "dapo" / "config.json").read_text())
    assert config["algo"]["name"] == "dapo"
    for r in rows:
        assert 0 <= r["sampling/groups_kept"] <= 4 and r["sampling/groups_dropped"] >= 0
        assert 0 <= r["sampling/extra_rounds"] <= 3
        assert "reward/overlong" in r and r["reward/overlong"] <= 0.0  # a penalty, never a bonus
