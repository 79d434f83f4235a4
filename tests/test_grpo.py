"""GRPO end to end on the real stack: Ray actors, vLLM's CPU engine, the 4-bit LoRA learner.

- the sync check passes on a true sync and fails loudly on a stale adapter or a wrong version;
- a run killed with SIGKILL mid-way resumes from its last complete checkpoint and finishes.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config import Config, load

REPO = Path(__file__).resolve().parents[1]


def test_sync_check_catches_a_stale_adapter(ray_local, tiny_model_dir, tmp_path):
    ray = ray_local
    from actors.learner import LearnerActor
    from actors.rollout import RolloutActor
    from actors.sync import SyncError, verify_sync
    from learners.models import load_tokenizer

    cfg = load(Config, "tiny-cpu", ["model.preset=tiny", "train.lr=0.02", "model.lora.r=8", "model.lora.alpha=16"])
    learner = LearnerActor.options(num_cpus=0.5).remote(str(tiny_model_dir), cfg.model, cfg.algo, cfg.train, 0)
    base = ray.get(learner.export_engine_base.remote(str(tmp_path / "engine_base")))
    assert Path(base) != Path(tiny_model_dir)  # a QLoRA learner serves its dequantised base
    rollout = RolloutActor.options(num_cpus=0.5).remote(base, cfg.rollout, max_lora_rank=8)
    tok = load_tokenizer(tiny_model_dir)
    probe = [tok('What is 2+3? {"answer": 5}').input_ids, tok("Add 4 and 4. 8").input_ids]
    tol = cfg.rollout.sync_probe_tolerance

    v0 = ray.get(learner.export_adapter.remote(str(tmp_path / "adapters")))
    ray.get(rollout.load_adapter.remote(v0["path"], v0["version"]))
    assert verify_sync(rollout, learner, probe, 0, tol)["sync_gap_mean"] < tol

    # Real samples from the engine, one real update on them.
    prompt = probe[0][:8]
    gen = ray.get(rollout.generate.remote([prompt, prompt], n=4, max_tokens=8, seed=0))
    assert gen["adapter_version"] == 0 and len(gen["samples"]) == 2 and all(len(g) == 4 for g in gen["samples"])
    samples = [s for g in gen["samples"] for s in g]
    assert all(len(s["logprobs"]) == len(s["token_ids"]) for s in samples)
    # Seeded sampling: reproducible, and every sample of the batch has its own stream (the same prompt twice
    # gives two different groups; a batch-wide seed gave them the same samples, which starved GRPO).
    again = ray.get(rollout.generate.remote([prompt, prompt], n=4, max_tokens=8, seed=0))
    assert [s["token_ids"] for g in again["samples"] for s in g] == [s["token_ids"] for s in samples]
    assert [s["token_ids"] for s in gen["samples"][0]] != [s["token_ids"] for s in gen["samples"][1]]
    stats = ray.get(learner.step.remote([prompt] * 8, [s["token_ids"] for s in samples],
                                        [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], [0, 0, 0, 0, 1, 1, 1, 1]))
    assert stats["version"] == 1 and stats["grad_norm"] > 0
    v1 = ray.get(learner.export_adapter.remote(str(tmp_path / "adapters")))

    # The engine still holds v0's weights but is told it serves v1: the logprob probe catches it.
    ray.get(rollout.load_adapter.remote(v0["path"], 1))
    with pytest.raises(SyncError, match="differ"):
        verify_sync(rollout, learner, probe, 1, tol)
    # The engine never loaded v1 at all: the version check catches it.
    ray.get(rollout.unload_adapter.remote())
    with pytest.raises(SyncError, match="serves adapter version -1"):
        verify_sync(rollout, learner, probe, 1, tol)
    # A real load passes.
    ray.get(rollout.load_adapter.remote(v1["path"], v1["version"]))
    assert verify_sync(rollout, learner, probe, 1, tol)["sync_gap_mean"] < tol
    ray.get(rollout.shutdown.remote())
    for a in (rollout, learner):
        ray.kill(a)


def _grpo_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "pipelines" / "grpo.py"), "model.preset=tiny", "data.warm_start_steps=0",
            "train.steps=6", "checkpoint.every=2", "checkpoint.keep=2", "train.heldout_prompts=4",
            "rollout.n_samples=4", "train.prompts_per_step=4", "rollout.max_new_tokens=8", "progress=false",
            "tensorboard=false", f"runs_dir={run_dir}", "run_name=kill", *extra]


def test_sigkill_mid_run_then_resume(tmp_path):
    run = tmp_path / "kill"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log1 = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_grpo_cmd(tmp_path), stdout=log1, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 480
    try:
        while time.time() < deadline and not (run / "checkpoints" / "step-000004" / "COMPLETE").exists():
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        assert (run / "checkpoints" / "step-000004" / "COMPLETE").exists(), "no checkpoint in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
        proc.wait()
    assert not (run / "summary.json").exists()
    out = subprocess.run(_grpo_cmd(tmp_path, "resume=true"), capture_output=True, text=True, env=env, timeout=480)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resumed from" in out.stdout and "at step 4" in out.stdout
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5]  # each step exactly once: lost steps redone, none duplicated
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["heldout_reward_start"] is not None
    assert (run / "reward_curve.png").exists()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-000004", "step-000006"]  # rotated: keep=2
