"""The memory planner's learner estimate against measured peaks of a training step on CPU (docs/planner.md).

    python bench/planner_peaks.py            # tiny and mini models; prints a markdown table

Two measurements per case:
- profiler: the largest rise of live tensor bytes during one steady-state step (forward, backward, AdamW),
  from torch.profiler's allocation events; compared with the estimate minus what was live before the step
  (frozen weights, LoRA weights, AdamW moments);
- RSS: peak resident memory (VmHWM, restarted just before loading) of a fresh process that loads the model and
  runs two steps, minus its RSS at that moment; compared with the whole estimate. glibc is told to hand freed buffers back at once
  (MALLOC_MMAP_THRESHOLD_=65536), so RSS follows live memory instead of the allocator's hoard.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (preset, finetune, dtype, gradient checkpointing, padded, micro batch, sequence length)
CASES = [
    ("tiny", "lora", "float32", False, False, 8, 128),
    ("tiny", "lora", "float32", True, False, 8, 128),
    ("tiny", "qlora", "float32", False, True, 8, 128),
    ("tiny", "qlora", "bfloat16", False, True, 8, 128),
    ("mini", "qlora", "float32", False, True, 8, 256),
    ("mini", "qlora", "float32", True, True, 16, 256),
    ("mini", "lora", "bfloat16", False, True, 4, 256),
]
RANK = 8


def _setup(preset, finetune, dtype, gc, padded, B, T):
    import torch

    from config import LoraConfig
    from learners.models import load_policy
    from tinymodels import ensure_tiny_model

    path = ensure_tiny_model(REPO / ".cache", preset, 0)
    model, _ = load_policy(path, finetune=finetune, lora=LoraConfig(r=RANK), dtype=dtype, gradient_checkpointing=gc)
    model.train()  # gradient checkpointing only acts in train mode
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (B, T), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        mask[0, : T // 4] = 0
    return path, model, opt, ids, mask


def _step(model, opt, ids, mask):
    from learners.logprobs import sequence_logprobs

    lp = sequence_logprobs(model, ids, mask)
    (-(lp * mask[:, 1:]).sum() / mask.sum()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def profiled_peak(case) -> tuple[int, float]:
    from torch.profiler import ProfilerActivity, profile

    from cluster.memory import ModelShape, learner_memory

    preset, finetune, dtype, gc, padded, B, T = case
    path, model, opt, ids, mask = _setup(*case)
    _step(model, opt, ids, mask)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(model, opt, ids, mask)
    live = peak = 0
    for e in sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    est = learner_memory(ModelShape.load(str(path)), finetune=finetune, dtype=dtype, rank=RANK, micro_batch=B,
                         seq_len=T, gradient_checkpointing=gc, padded=padded)
    return peak, est["peak"] - est["weights"] - est["trainable weights"] - est["optimizer state"]


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_child(case) -> None:
    import torch

    # page in the code paths on a throwaway copy so the baseline holds them
    _, m, o, _, _ = _setup(*case[:5], 1, 8)
    _step(m, o, torch.randint(3, 100, (1, 8)), torch.ones(1, 8, dtype=torch.long))
    del m, o
    base = _status_kib("VmRSS")
    # VmHWM is this address space's peak (getrusage's ru_maxrss would include the parent's RSS from before exec);
    # writing 5 to clear_refs restarts it from the current RSS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    path, model, opt, ids, mask = _setup(*case)
    for _ in range(2):
        _step(model, opt, ids, mask)
    print(json.dumps({"base": base * 1024, "peak": _status_kib("VmHWM") * 1024}))


def rss_peak(case) -> tuple[int, float]:
    from cluster.memory import ModelShape, learner_memory
    from tinymodels import ensure_tiny_model

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_ARENA_MAX="1")
    out = subprocess.run([sys.executable, __file__, "--rss-child", json.dumps(case)], env=env, cwd=REPO,
                         capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    preset, finetune, dtype, gc, padded, B, T = case
    est = learner_memory(ModelShape.load(str(ensure_tiny_model(REPO / ".cache", preset, 0))), finetune=finetune,
                         dtype=dtype, rank=RANK, micro_batch=B, seq_len=T, gradient_checkpointing=gc, padded=padded)
    return got["peak"] - got["base"], est["peak"]


def main() -> None:
    if sys.argv[1:2] == ["--rss-child"]:
        return rss_child(tuple(json.loads(sys.argv[2])))
    mib = 2**20
    print("| model | finetune | dtype | checkpointing | padded | batch x seq | step peak: measured / planner (MiB) | ratio "
          "| load + steps RSS: measured / planner (MiB) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in CASES:
        preset, finetune, dtype, gc, padded, B, T = case
        m, e = profiled_peak(case)
        rm, re_ = rss_peak(case)
        print(f"| {preset} | {finetune} | {dtype} | {'yes' if gc else 'no'} | {'yes' if padded else 'no'} | {B} x {T} "
              f"| {m / mib:.1f} / {e / mib:.1f} | {e / m:.3f} | {rm / mib:.1f} / {re_ / mib:.1f} | {re_ / rm:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
