"""The memory planner's arithmetic: against hand calculations for Qwen3-4B, to the byte against tiny models
loaded here, and against measured peaks of a training step on CPU.

Measured peaks and their tolerances (docs/planner.md explains them):
- saved activations: every tensor autograd keeps for backward (``saved_tensors_hooks``), within 3%;
- step peak: live tensor bytes from the torch profiler's allocation events, within 15%;
- peak RSS (VmHWM) of loading + two steps in a fresh process, within 25% (RSS also holds autograd's graph,
  Python objects and first-use kernel buffers; glibc is told to hand freed buffers back at once, so RSS follows
  live memory).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.memory import (GiB, KNOWN_MODELS, LINEARS, ModelShape, SavedForBackward, kv_bytes_per_token,
                            layer_saved_bytes, learner_memory, logits_bytes, lora_params, main, nf4_matrix_bytes, plan_memory,
                            rollout_memory, trainable_state_bytes, weight_bytes)
from config import Config, load

REPO = Path(__file__).resolve().parents[1]
QWEN3_4B = KNOWN_MODELS["Qwen/Qwen3-4B"]


# ------------------------------------------------------------------------------------------- by hand

def test_qwen3_4b_counts_by_hand():
    h, i, q, kv, L, V = 2560, 9728, 32 * 128, 8 * 128, 36, 151936
    layer_linear = h * q + 2 * h * kv + q * h + 3 * h * i  # q, k, v, o, gate, up, down
    assert layer_linear == 100_925_440
    assert QWEN3_4B.linear_params == L * layer_linear
    # tied embeddings once, two RMSNorms + q/k norms per layer, the final norm
    assert QWEN3_4B.params == V * h + L * (layer_linear + 2 * h + 2 * 128) + h == 4_022_468_096
    # KV cache: K and V, 36 layers, 8 kv heads of 128, bf16
    assert kv_bytes_per_token(QWEN3_4B) == 2 * 36 * 8 * 128 * 2 == 147_456
    assert kv_bytes_per_token(QWEN3_4B, tensor_parallel=2) == 147_456 // 2
    # LoRA r=32 on all seven matrices: r (d_in + d_out) each
    per_layer = 32 * ((h + q) + 2 * (h + kv) + (q + h) + 3 * (h + i))
    assert per_layer == 1_835_008
    assert lora_params(QWEN3_4B, 32, LINEARS) == 36 * per_layer == 66_060_288
    assert trainable_state_bytes(66_060_288) == {"weights": 264_241_152, "grads": 264_241_152,
                                                 "optimizer": 528_482_304}


def test_nf4_bytes_per_weight_by_hand():
    # 4 bits + an 8-bit absmax per 64 weights + an fp32 absmax per 256 blocks = 0.51587 bytes per weight
    n = 2560 * 9728
    assert nf4_matrix_bytes(n) == n // 2 + n // 64 + 4 * ((n // 64 + 255) // 256) + (16 + 256) * 4 + 4
    assert 0.5158 < nf4_matrix_bytes(n) / n < 0.5162
    w = weight_bytes(QWEN3_4B, "nf4", "bfloat16")
    # quantised decoder (1.874e9 B) + bf16 embeddings and norms (0.778e9 B)
    assert w == 36 * sum(nf4_matrix_bytes(a * b) for a, b in QWEN3_4B.linears().values()) + QWEN3_4B.other_params * 2
    assert 2.46 * GiB < w < 2.48 * GiB
    assert weight_bytes(QWEN3_4B, "none", "bfloat16") == 2 * 4_022_468_096


def test_logits_and_rollout_budget_by_hand():
    # bf16 model: fp32 logits saved (4V + 12) + three fp32 V-wide transients + the bf16 logits (2V)
    assert sum(logits_bytes(151936, "bfloat16").values()) == 18 * 151936 + 12
    assert sum(logits_bytes(151936, "float32").values()) == 16 * 151936 + 12
    dev = 16376 / 1024
    eng = rollout_memory(QWEN3_4B, dev, gpu_memory_utilization=0.65, max_model_len=1536, max_lora_rank=32,
                         enforce_eager=False)
    assert eng["budget"] == pytest.approx(0.65 * 16376 * 2**20)
    assert eng["weights"] == 2 * 4_022_468_096
    assert eng["lora slots"] == 2 * 66_060_288
    act = 8192 * (3 * 9728 + 4 * 2560 + (32 + 16) * 128) * 2 + 8 * 256 * 151936
    assert eng["activations (profile run)"] == act
    rest = eng["budget"] - eng["weights"] - eng["lora slots"] - act - 0.25 * GiB - 0.5 * GiB
    assert eng["kv cache"] == pytest.approx(rest)
    assert eng["kv tokens"] == pytest.approx(rest / 147_456)


# ------------------------------------------------------------------------------------------- plans

def _cfg(name: str, *over: str) -> Config:
    return load(Config, name, list(over))


OLD_4080 = ("rollout.gpu_memory_utilization=0.35", "train.micro_batch_size=4")  # the first preset, which did not fit


def test_rtx4080_preset_verdict_names_what_to_change():
    assert plan_memory(_cfg("rtx4080"), QWEN3_4B, "rtx4080").fits  # the shipped preset
    plan = plan_memory(_cfg("rtx4080", *OLD_4080), QWEN3_4B, "rtx4080")
    assert not plan.fits
    engine, learner = plan.problems
    assert "rollout.gpu_memory_utilization=0.35" in engine and "at least 0.60" in engine
    assert "logits" in learner and "train.micro_batch_size=2" in learner and "151,936" in learner
    lo, hi = plan.utilization_range
    assert 0.55 < lo < hi < 0.75
    fixed = plan_memory(_cfg("rtx4080", "rollout.gpu_memory_utilization=0.65", "train.micro_batch_size=2"),
                        QWEN3_4B, "rtx4080")
    assert fixed.fits, fixed.report()
    assert "FITS" in fixed.report()


def test_largest_batch_and_sequence_are_the_edges_of_fitting():
    plan = plan_memory(_cfg("rtx4080", *OLD_4080), QWEN3_4B, "rtx4080")
    mb, seq = plan.largest_micro_batch, plan.largest_seq_len
    assert mb >= 1 and seq >= 1

    def learner_ok(*over):
        p = plan_memory(_cfg("rtx4080", *OLD_4080, "rollout.gpu_memory_utilization=0.65", *over), QWEN3_4B, "rtx4080")
        return not any(x.startswith("training") for x in p.problems)

    assert learner_ok(f"train.micro_batch_size={mb}") and not learner_ok(f"train.micro_batch_size={mb + 1}")
    assert learner_ok(f"rollout.max_model_len={seq}") and not learner_ok(f"rollout.max_model_len={seq + 1}")


def test_checkpointing_and_quantisation_change_what_they_should():
    kw = dict(micro_batch=2, seq_len=1024, dtype="bfloat16", rank=32)
    gc = learner_memory(QWEN3_4B, gradient_checkpointing=True, **kw)
    no = learner_memory(QWEN3_4B, gradient_checkpointing=False, **kw)
    assert no["activations kept"] > 10 * gc["activations kept"]
    full = learner_memory(QWEN3_4B, finetune="full", **kw)
    assert full["optimizer state"] == 2 * 2 * QWEN3_4B.params
    assert learner_memory(QWEN3_4B, finetune="lora", **kw)["weights"] == 2 * QWEN3_4B.params


def test_split_plan_on_small_and_large_gpus():
    big = plan_memory(_cfg("multinode"), KNOWN_MODELS["Qwen/Qwen3-8B"], "h100-80")
    assert big.fits, big.report()
    small = plan_memory(_cfg("multinode"), KNOWN_MODELS["Qwen/Qwen3-8B"], "l4")
    assert not small.fits and "each learner GPU" in small.problems[0]
    tp = plan_memory(_cfg("multinode", "rollout.tensor_parallel_size=2"), KNOWN_MODELS["Qwen/Qwen3-8B"], "l4")
    assert tp.roles["rollout"]["kv tokens"] > 2 * small.roles["rollout"]["kv tokens"]


def test_user_errors_say_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="rtx4080"):
        plan_memory(_cfg("rtx4080"), QWEN3_4B, "rtx9999")
    with pytest.raises(ValueError, match="point model.path at a downloaded copy"):
        ModelShape.load(str(tmp_path / "nothing-here"))
    with pytest.raises(ValueError, match="model.path is empty"):
        ModelShape.load("")
    with pytest.raises(ValueError, match="model.lora.target_modules"):
        lora_params(QWEN3_4B, 8, ["q_proj", "qkv"])


def test_command_line(capsys):
    assert main(["config=rtx4080", "--gpu", "rtx4080", *OLD_4080]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "4.022B parameters" in out
    assert main(["config=rtx4080", "rollout.gpu_memory_utilization=0.65", "train.micro_batch_size=2"]) == 0
    assert main(["config=rtx4080", "train.bogus=1"]) == 2
    assert "unknown config key 'train.bogus'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- tiny models, exact

@pytest.fixture(scope="module")
def tiny_shape(tiny_model_dir) -> ModelShape:
    return ModelShape.load(str(tiny_model_dir))


def _storages(tensors) -> int:
    seen = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def test_weights_lora_and_adam_to_the_byte(tiny_model_dir, tiny_shape):
    import torch

    from config import LoraConfig
    from learners.models import load_policy

    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert tiny_shape.hidden == cfg["hidden_size"] and tiny_shape.vocab == cfg["vocab_size"]
    model, _ = load_policy(tiny_model_dir, finetune="qlora", lora=LoraConfig(r=8), dtype="float32")
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == lora_params(tiny_shape, 8, LINEARS)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    quant = []
    for m in model.modules():
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        if qs is not None:
            quant += [qs.absmax, qs.code, qs.offset, qs.state2.absmax, qs.state2.code]
    assert _storages(frozen + quant) == weight_bytes(tiny_shape, "nf4", "float32")
    full, _ = load_policy(tiny_model_dir, finetune="full")
    assert sum(p.numel() for p in full.parameters()) == tiny_shape.params

    opt = torch.optim.AdamW(trainable, lr=1e-3)
    ids = torch.randint(3, tiny_shape.vocab, (2, 16))
    model(input_ids=ids).logits.float().logsumexp(-1).mean().backward()
    opt.step()
    moments = [s[k] for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq")]
    assert _storages(moments) == trainable_state_bytes(sum(p.numel() for p in trainable))["optimizer"]


@pytest.mark.parametrize("finetune,dtype,padded", [("lora", "float32", False), ("qlora", "bfloat16", True)])
def test_saved_activations_match_autograd(tiny_model_dir, tiny_shape, finetune, dtype, padded):
    import torch

    from config import LoraConfig
    from learners.logprobs import sequence_logprobs
    from learners.models import load_policy

    model, _ = load_policy(tiny_model_dir, finetune=finetune, lora=LoraConfig(r=8), dtype=dtype)
    model.train()
    B, T = 4, 96
    ids = torch.randint(3, tiny_shape.vocab, (B, T))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, : T // 3] = 0
    with SavedForBackward(model) as saved:
        sequence_logprobs(model, ids, mask)
    per_layer = sum(layer_saved_bytes(tiny_shape, dtype, LINEARS, 8, finetune, padded, T).values())
    estimate = B * T * (tiny_shape.layers * per_layer + 4 * tiny_shape.hidden + 4 + logits_bytes(tiny_shape.vocab, dtype)["saved"])
    assert estimate == pytest.approx(saved.bytes, rel=0.03)


def _step_peak(model, ids, mask, opt) -> int:
    """Largest rise of live tensor bytes during one step, from the profiler's allocation/free events."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from learners.logprobs import sequence_logprobs

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        lp = sequence_logprobs(model, ids, mask)
        (-(lp * mask[:, 1:]).sum() / mask.sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del lp
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("finetune,checkpointing,padded", [("lora", False, False), ("lora", True, False),
                                                          ("qlora", False, True)])
def test_step_peak_matches_profiler(tiny_model_dir, tiny_shape, finetune, checkpointing, padded):
    import torch

    from config import LoraConfig
    from learners.models import load_policy

    model, _ = load_policy(tiny_model_dir, finetune=finetune, lora=LoraConfig(r=8), gradient_checkpointing=checkpointing)
    model.train()  # gradient checkpointing only acts in train mode
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    B, T = 8, 128
    ids = torch.randint(3, tiny_shape.vocab, (B, T))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, : T // 4] = 0
    _step_peak(model, ids, mask, opt)  # AdamW's moments exist from here on, as in the planner's steady state
    measured = _step_peak(model, ids, mask, opt)
    est = learner_memory(tiny_shape, finetune=finetune, dtype="float32", rank=8, micro_batch=B, seq_len=T,
                         gradient_checkpointing=checkpointing, padded=padded)
    # the profiled region starts with the weights, LoRA weights and moments already live
    during_step = est["peak"] - est["weights"] - est["trainable weights"] - est["optimizer state"]
    assert during_step == pytest.approx(measured, rel=0.15)


RSS_CHILD = r"""
import json, sys, torch
from config import LoraConfig
from learners.logprobs import sequence_logprobs
from learners.models import load_policy
path, B, T = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def status_kib(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))
# page in the code paths (lazy imports, kernels) on a first copy, so the baseline holds them
m, _ = load_policy(path, finetune="qlora", lora=LoraConfig(r=8))
x = torch.randint(3, 100, (1, 8)); sequence_logprobs(m, x, torch.ones_like(x)).sum().backward()
del m, x
base = status_kib("VmRSS")
# VmHWM is this address space's peak (ru_maxrss would carry the parent's RSS across exec); "5" restarts it here
open("/proc/self/clear_refs", "w").write("5")
model, _ = load_policy(path, finetune="qlora", lora=LoraConfig(r=8))
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
ids = torch.randint(3, 500, (B, T)); mask = torch.ones_like(ids); mask[0, : T // 4] = 0
for _ in range(2):
    lp = sequence_logprobs(model, ids, mask)
    (-(lp * mask[:, 1:]).sum() / mask.sum()).backward(); opt.step(); opt.zero_grad(set_to_none=True)
print(json.dumps({"base": base * 1024, "peak": status_kib("VmHWM") * 1024}))
"""


def test_load_and_step_peak_rss_in_a_fresh_process(tiny_model_dir, tiny_shape):
    # glibc keeps freed buffers above a moving threshold; a fixed threshold hands them back, so RSS follows live memory
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_ARENA_MAX="1")
    B, T = 16, 256
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(tiny_model_dir), str(B), str(T)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    est = learner_memory(tiny_shape, finetune="qlora", dtype="float32", rank=8, micro_batch=B, seq_len=T, padded=True)
    assert est["peak"] > 64 * 2**20  # large enough that interpreter noise cannot decide the comparison
    assert est["peak"] == pytest.approx(got["peak"] - got["base"], rel=0.25)
