"""GRPO end to end on the real stack: Ray actors, vLLM's CPU engine, the 4-bit LoRA learner.

- the sync check (identity hash + calibrated probe) passes on a true sync and fails loudly on a stale adapter or a
  wrong version, at the demo's learning rate and at 1e-5, with either bitsandbytes kernel and with a bf16 engine;
- the same with merged-weight sync (W0 + s B A loaded into the engine's layers in place);
- a run killed with SIGKILL mid-way, its newest checkpoint and metrics line torn, resumes from the last complete
  checkpoint and finishes with every step logged once.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from config import Config, load

REPO = Path(__file__).resolve().parents[1]


def _has_fused_4bit_kernel() -> bool:
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


@pytest.fixture(scope="module")
def engine_base(ray_local, tiny_model_dir, tmp_path_factory):
    """The dequantised NF4 base the engines serve (the same for every learner on this model)."""
    from learners.models import export_engine_base, load_policy

    model, _ = load_policy(tiny_model_dir, "qlora")
    out = export_engine_base(tiny_model_dir, model, tmp_path_factory.mktemp("engine_base"))
    assert Path(out) != Path(tiny_model_dir)  # a QLoRA learner serves its dequantised base
    return str(out)


@pytest.fixture(scope="module")
def fp32_engine(ray_local, engine_base):
    from actors.rollout import RolloutActor

    cfg = load(Config, "tiny-cpu", [])
    rollout = RolloutActor.options(num_cpus=0.5).remote(engine_base, cfg.rollout, max_lora_rank=8)
    yield rollout
    ray_local.get(rollout.shutdown.remote())
    ray_local.kill(rollout)


def _probe(tiny_model_dir):
    from learners.models import load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    return [tok('What is 2+3? {"answer": 5}').input_ids, tok("Add 4 and 4. 8").input_ids]


def _stale_adapter_is_caught(ray, rollout, tiny_model_dir, tmp_path, lr: float, fused: bool, engine_dtype: str) -> dict:
    """Calibrate, sync v0, one real update, then: a stale adapter, a lying engine and an unloaded one are caught;
    a true load passes. Returns the calibration and the true sync's metrics."""
    from actors.learner import LearnerActor
    from actors.sync import SyncError, SyncVerifier

    cfg = load(Config, "tiny-cpu", [f"train.lr={lr}", "model.lora.r=8", "model.lora.alpha=16",
                                    f"model.bnb_fused_cpu_kernel={str(fused).lower()}"])
    learner = LearnerActor.options(num_cpus=0.5).remote(str(tiny_model_dir), cfg.model, cfg.algo, cfg.train, 0)
    probe = _probe(tiny_model_dir)
    verifier = SyncVerifier([rollout], learner, probe, engine_dtype, cfg.rollout.sync_tolerance_factor)
    cal = verifier.calibrate(tmp_path / "adapters")
    # The tolerance is derived from this run's measured floor, not a constant.
    assert cal["sync/tolerance"] >= cfg.rollout.sync_tolerance_factor * cal["sync/floor_mean"] and cal["sync/tolerance"] > 0
    first = verifier.sync(tmp_path / "adapters")
    assert first["adapter_version"] == 0 and first["sync/gap_mean"] <= cal["sync/tolerance"]
    v0 = ray.get(learner.export_adapter.remote(str(tmp_path / "adapters"), engine_dtype))

    # Real samples from the engine, one real update on them.
    prompt = probe[0][:8]
    gen = ray.get(rollout.generate.remote([prompt, prompt], n=4, max_tokens=8, seed=0))
    samples = [s for g in gen["samples"] for s in g]
    stats = ray.get(learner.step.remote([prompt] * 8, [s["token_ids"] for s in samples],
                                        [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], [0, 0, 0, 0, 1, 1, 1, 1]))
    assert stats["version"] == 1 and stats["grad_norm"] > 0
    v1 = ray.get(learner.export_adapter.remote(str(tmp_path / "adapters"), engine_dtype))

    # The engine still holds v0's weights but is told it serves v1: the hash of what it holds gives it away,
    # at any learning rate.
    ray.get(rollout.load_adapter.remote(v0["path"], 1))
    with pytest.raises(SyncError, match="holds other weights than the learner exported"):
        verifier.check(v1)
    # An engine whose identity report cannot be trusted (here: told to expect what it holds) is still caught
    # by the calibrated probe once the update is large enough for the probe to resolve.
    resolvable = ray.get(learner.probe_logprobs.remote(probe))["logprobs"]
    from actors.sync import probe_gap

    moved = probe_gap(resolvable, ray.get(rollout.prompt_logprobs.remote(probe))["logprobs"])[0]
    if moved > cal["sync/tolerance"]:
        with pytest.raises(SyncError, match="differ"):
            verifier.check({**v1, "digest": v0["digest"]})
    # The engine never loaded v1 at all: the version check catches it.
    ray.get(rollout.unload_adapter.remote())
    with pytest.raises(SyncError, match="serves adapter version -1"):
        verifier.check(v1)
    # A real load passes, within the calibrated tolerance.
    ray.get(rollout.load_adapter.remote(v1["path"], v1["version"]))
    true = verifier.check(v1)
    assert true["sync/gap_mean"] <= cal["sync/tolerance"]
    ray.kill(learner)
    print(f"[sync] lr={lr} fused={fused} engine={engine_dtype}: floor {cal['sync/floor_mean']:.3g} "
          f"tolerance {cal['sync/tolerance']:.3g} true gap {true['sync/gap_mean']:.3g} stale gap {moved:.3g}")
    return {**cal, **true, "moved": moved}


@pytest.mark.parametrize("lr", [2e-3, 1e-5], ids=["demo-lr", "lr-1e-5"])
def test_sync_check_catches_a_stale_adapter(ray_local, fp32_engine, tiny_model_dir, tmp_path, lr):
    out = _stale_adapter_is_caught(ray_local, fp32_engine, tiny_model_dir, tmp_path, lr, fused=False,
                                   engine_dtype="float32")
    if lr == 2e-3:  # one update at the demo's rate moves the probe far beyond the floor: the effect check bites
        assert out["sync/probe_resolvable"] == 1.0 and out["moved"] > out["sync/tolerance"]


@pytest.mark.skipif(not _has_fused_4bit_kernel(), reason="this CPU lacks AVX512-BF16: bitsandbytes has no fused path here")
def test_sync_check_with_bitsandbytes_fused_kernel(ray_local, fp32_engine, tiny_model_dir, tmp_path):
    """bitsandbytes' fused bf16 path (no-grad forwards only) makes the learner's probe ~1e-3 off the fp32 engine;
    the calibration absorbs that floor and a stale adapter is still caught."""
    out = _stale_adapter_is_caught(ray_local, fp32_engine, tiny_model_dir, tmp_path, 2e-3, fused=True,
                                   engine_dtype="float32")
    assert out["sync/floor_mean"] > 0


def test_sync_check_with_a_noisier_bf16_engine(ray_local, engine_base, tiny_model_dir, tmp_path):
    """An engine serving the base rounded to bf16 sees a far larger floor; the calibrated tolerance lets a true
    sync pass and the identity check still fails a stale one."""
    from actors.rollout import RolloutActor

    cfg = load(Config, "tiny-cpu", [])
    rollout = RolloutActor.options(num_cpus=0.5).remote(engine_base, cfg.rollout, max_lora_rank=8, dtype="bfloat16")
    try:
        out = _stale_adapter_is_caught(ray_local, rollout, tiny_model_dir, tmp_path, 2e-3, fused=False,
                                       engine_dtype="bfloat16")
        # bf16 keeps 8 bits of mantissa: its floor is far above fp32's rounding at these magnitudes, and the
        # probe still resolves one update at the demo's rate
        assert out["sync/floor_mean"] > 64 * torch.finfo(torch.float32).eps
        assert out["sync/probe_resolvable"] == 1.0
    finally:
        ray_local.get(rollout.shutdown.remote())
        ray_local.kill(rollout)


def test_merged_weight_sync_is_verified_both_ways(ray_local, engine_base, tiny_model_dir, tmp_path):
    """rollout.weight_sync=merged: the engine (no LoRA kernels) loads W0 + s B A in place. A true load passes
    identity and the calibrated probe; an engine that holds the previous version's matrices while told it serves
    the new one is caught by the hashes of what its layers hold, and by the probe once an update resolves."""
    import shutil

    from actors.learner import LearnerActor
    from actors.rollout import RolloutActor
    from actors.sync import SyncError, SyncVerifier, probe_gap

    ray = ray_local
    cfg = load(Config, "tiny-cpu", ["model.lora.r=8", "model.lora.alpha=16", "model.dtype=float32"])
    engine = RolloutActor.options(num_cpus=0.5).remote(engine_base, cfg.rollout, dtype="float32", enable_lora=False)
    learner = LearnerActor.options(num_cpus=0.5).remote(str(tiny_model_dir), cfg.model, cfg.algo, cfg.train, 0)
    try:
        probe = _probe(tiny_model_dir)
        verifier = SyncVerifier([engine], learner, probe, "float32", cfg.rollout.sync_tolerance_factor, mode="merged")
        cal = verifier.calibrate(tmp_path / "adapters")
        first = verifier.sync(tmp_path / "adapters")
        assert first["adapter_version"] == 0 and first["sync/gap_mean"] <= cal["sync/tolerance"]
        held = ray.get(engine.prompt_logprobs.remote(probe))["digest"]["modules"]
        assert len(held) == 2 * 7  # every projection of both layers (q/k/v and gate/up rebuilt from their parts)
        v0 = ray.get(learner.export_adapter.remote(str(tmp_path / "adapters"), "float32", "merged"))
        keep_v0 = shutil.copy(v0["path"], tmp_path / "v0.safetensors")

        prompt = probe[0][:8]
        gen = ray.get(engine.generate.remote([prompt, prompt], n=4, max_tokens=8, seed=0))
        samples = [s for g in gen["samples"] for s in g]
        assert {s["version"] for s in samples} == {0}  # every sample says which weights produced it
        ray.get(learner.step.remote([prompt] * 8, [s["token_ids"] for s in samples],
                                    [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], [0, 0, 0, 0, 1, 1, 1, 1]))
        v1 = ray.get(learner.export_adapter.remote(str(tmp_path / "adapters"), "float32", "merged"))
        assert v1["digest"] != v0["digest"]

        ray.get(engine.load_merged.remote(keep_v0, 1))  # v0's matrices, labelled v1
        with pytest.raises(SyncError, match="holds other weights than the learner exported"):
            verifier.check(v1)
        moved = probe_gap(ray.get(learner.probe_logprobs.remote(probe))["logprobs"],
                          ray.get(engine.prompt_logprobs.remote(probe))["logprobs"])[0]
        if moved > cal["sync/tolerance"]:
            engine_held = ray.get(engine.prompt_logprobs.remote(probe))["digest"]
            with pytest.raises(SyncError, match="differ"):
                verifier.check({**v1, "digest": engine_held["modules"]})
        ray.get(engine.load_weights.remote(v1))
        true = verifier.check(v1)
        assert true["sync/gap_mean"] <= cal["sync/tolerance"]
        print(f"[sync] merged: floor {cal['sync/floor_mean']:.3g} tolerance {cal['sync/tolerance']:.3g} "
              f"true gap {true['sync/gap_mean']:.3g} stale gap {moved:.3g}")
    finally:
        ray.get(engine.shutdown.remote())
        ray.kill(engine)
        ray.kill(learner)


def _grpo_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "pipelines" / "grpo.py"), "model.preset=tiny", "data.warm_start_steps=0",
            "train.steps=6", "checkpoint.every=2", "checkpoint.keep=2", "train.heldout_prompts=4",
            "rollout.n_samples=4", "train.prompts_per_step=4", "rollout.max_new_tokens=8", "progress=false",
            "tensorboard=false", f"runs_dir={run_dir}", "run_name=kill", *extra]


def test_sigkill_mid_run_then_resume_past_a_torn_checkpoint(tmp_path):
    run = tmp_path / "kill"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log1 = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_grpo_cmd(tmp_path), stdout=log1, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 480
    try:
        while time.time() < deadline and not (run / "checkpoints" / "step-000004" / "COMPLETE").exists():
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.02)  # a tiny step takes a few tenths of a second now: kill before the last two finish
        assert (run / "checkpoints" / "step-000004" / "COMPLETE").exists(), "no checkpoint in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
        proc.wait()
    assert not (run / "summary.json").exists()
    # Tear the state the kill could have left: the newest checkpoint loses a file, metrics.jsonl ends in half a line.
    (run / "checkpoints" / "step-000004" / "learner_state.pt").unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "reward/me')
    out = subprocess.run(_grpo_cmd(tmp_path, "resume=true"), capture_output=True, text=True, env=env, timeout=480)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resumed from" in out.stdout and "at step 2" in out.stdout  # the last complete checkpoint before the torn one
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5]  # each step exactly once: lost steps redone, none duplicated
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["heldout_reward_start"] is not None
    assert (run / "reward_curve.png").exists()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-000004", "step-000006"]  # rotated: keep=2


def test_engine_sampling_logprobs_are_the_learners_at_the_sampling_temperature(ray_local, fp32_engine, tiny_model_dir):
    """The engine reports the logprobs of the distribution it sampled from (temperature applied), and the learner
    scores pi_T = softmax(logits / T): on the same sampled tokens the two agree to the engine-vs-learner floor
    measured here on the probe, while scoring at T = 1 would be far off (the mismatch the metrics must see)."""
    from actors.sync import probe_gap, probe_tolerance
    from learners.models import load_policy
    from learners.step import batched_logprobs, build_sequences, gather_response

    ray = ray_local
    ray.get(fp32_engine.unload_adapter.remote())  # the bare (dequantised) base, as the fresh learner below
    model, tok = load_policy(tiny_model_dir, "qlora")
    model.eval()
    probe = _probe(tiny_model_dir)
    ids, att, _ = build_sequences(probe, [[] for _ in probe], tok.pad_token_id)
    lrn = batched_logprobs(model, ids, att, 8)
    eng = ray.get(fp32_engine.prompt_logprobs.remote(probe))["logprobs"]
    floor = probe_gap(eng, [lrn[i, : len(p) - 1].tolist() for i, p in enumerate(probe)])[0]
    mean_abs = sum(abs(x) for seq in eng for x in seq) / sum(len(seq) for seq in eng)
    tol = probe_tolerance(floor, mean_abs, 4.0, torch.finfo(torch.float32).eps)  # as the pipelines derive it

    T = 0.8
    prompt = probe[0][:8]
    gen = ray.get(fp32_engine.generate.remote([prompt], n=8, max_tokens=8, temperature=T, seed=3))
    comps = [s["token_ids"] for s in gen["samples"][0]]
    ids, att, _ = build_sequences([prompt] * len(comps), comps, tok.pad_token_id)
    at_t = gather_response(batched_logprobs(model, ids, att, 8, temperature=T), [prompt] * len(comps), comps)
    at_1 = gather_response(batched_logprobs(model, ids, att, 8), [prompt] * len(comps), comps)
    engine_lp = [s["logprobs"] for s in gen["samples"][0]]
    assert probe_gap(engine_lp, at_t)[0] <= tol
    assert probe_gap(engine_lp, at_1)[0] > 10 * tol


def test_texts_decoded_after_sampling_are_the_engines_own(ray_local, fp32_engine, tiny_model_dir):
    """Without stop strings the engine samples ids only and RolloutEngine decodes the texts at the end in one batch
    (actors/rollout.py: vLLM's per-token incremental detokenizer was 40% of a demo-sized generate); the texts are
    those vLLM's detokenizer gives (forced on here by a stop string that never occurs), sample for sample, on an
    untrained model's arbitrary token sequences and the same seeds."""
    ray = ray_local
    ray.get(fp32_engine.unload_adapter.remote())
    prompts = [p[:6] for p in _probe(tiny_model_dir)]
    a, b = [], []
    for seed in (11, 12, 13):
        ids_only = ray.get(fp32_engine.generate.remote(prompts, n=16, max_tokens=24, temperature=1.0, seed=seed))
        detok = ray.get(fp32_engine.generate.remote(prompts, n=16, max_tokens=24, temperature=1.0, seed=seed,
                                                    stop=["\x00never\x00"]))
        a += [s for g in ids_only["samples"] for s in g]
        b += [s for g in detok["samples"] for s in g]
    assert [s["token_ids"] for s in a] == [s["token_ids"] for s in b]  # the same samples
    assert [s["text"] for s in a] == [s["text"] for s in b]
    assert sum(len(s["text"]) for s in a) > 100  # real text was compared, not empty strings


def test_streamed_reference_samples_as_the_engine_and_scores_as_the_learner(ray_local, fp32_engine, tiny_model_dir):
    """train.reference_logprobs=stream (actors/reference.py): the engine sends each row's new tokens to the
    reference scorer every few decode steps while it samples. Its samples are those of the plain path (same seeds:
    token ids, logprobs, finish reasons, texts), and the scorer's logprobs of them are the learner's own reference
    pass over the finished rows (LearnerWorker._ref_logprobs), both in float32 without 4-bit (model.finetune=lora):
    within 2 gamma_N of the largest entry (two orderings of the same fp32 sums, N = L (H + V + I) layers terms per
    logprob; tests/test_policy_math.py holds the same computation to the float64 bound)."""
    from actors.learner import LearnerWorker
    from actors.reference import ReferenceActor, ReferenceStream
    from learners.step import build_sequences

    ray = ray_local
    ray.get(fp32_engine.unload_adapter.remote())
    cfg = load(Config, "tiny-cpu", ["model.finetune=lora", "model.dtype=float32"])
    scorer = ReferenceActor.options(num_cpus=0).remote(str(tiny_model_dir), cfg.model, 1.0, num_threads=1)
    prompts = [p[:6] for p in _probe(tiny_model_dir)]
    for every in (1, 5):
        plain = ray.get(fp32_engine.generate.remote(prompts, n=4, max_tokens=24, temperature=1.0, seed=7))
        streamed = ray.get(fp32_engine.generate.remote(prompts, n=4, max_tokens=24, temperature=1.0, seed=7,
                                                       reference=ReferenceStream(scorer, every)))
        a = [s for g in plain["samples"] for s in g]
        b = [s for g in streamed["samples"] for s in g]
        for k in ("token_ids", "text", "finish_reason"):
            assert [s[k] for s in a] == [s[k] for s in b]
        assert [s["logprobs"] for s in a] == [s["logprobs"] for s in b]
        (scored,) = ray.get(streamed["reference"])
        assert scored["token_ids"] == [s["token_ids"] for s in b]
    assert len({len(s["token_ids"]) for s in b}) > 1 or all(len(s["token_ids"]) == 24 for s in b)
    w = LearnerWorker(str(tiny_model_dir), cfg.model, cfg.algo, cfg.train, 0)
    rows = [p for p in streamed["prompt_token_ids"] for _ in range(4)]
    ids, att, resp = build_sequences(rows, scored["token_ids"], w.pad_id)
    whole = w._ref_logprobs(ids, att, resp)
    ref = [whole[r][resp[r].bool()].tolist() for r in range(len(rows))]
    c = w.model.config
    N = ids.shape[1] * (c.hidden_size + c.vocab_size + c.intermediate_size) * c.num_hidden_layers
    top = max(abs(x) for row in ref for x in row)
    bound = 2 * N * 2.0 ** -24 / (1 - N * 2.0 ** -24) * top
    assert top > 5 * bound
    for x, y in zip(scored["logprobs"], ref):
        assert len(x) == len(y) and max(abs(u - v) for u, v in zip(x, y)) <= bound
    ray.kill(scorer)
