"""The RL learner's step alone: LearnerWorker in-process (no Ray, no engine) on the 25M `small` tiny model.

32 sequences (8 prompts x 4 samples) of ~32 prompt + 128 completion tokens, QLoRA r16 on the seven projections,
beta (algo.kl_coef) 0.02, one update per batch (so no old-logprob pass). Prints, per timed step, the learner's own
split (time_logprobs: the reference pass; time_update: the update), the process's CPU seconds (user + system: less
moved by other work on a shared machine than wall time) and min / median / max over the timed steps.

    .venv/bin/python bench/learner_step.py --dtype float32 --steps 5
    .venv/bin/python bench/learner_step.py --dtype bfloat16 --steps 5

    .venv/bin/python bench/learner_step.py --head-vocab 151936 --steps 3   # the head alone, Qwen3's vocabulary

Run it from another checkout (``PYTHONPATH=/tmp/old-checkout python bench/learner_step.py``) to time that code.
Figures: bench/learner.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def batch(seed: int, prompts: int = 8, samples: int = 4, prompt_len: int = 32, completion_len: int = 128,
          vocab: int = 1034):
    g = torch.Generator().manual_seed(seed)
    prompt_ids, completion_ids, rewards, groups = [], [], [], []
    for p in range(prompts):
        n = prompt_len + int(torch.randint(-4, 5, (1,), generator=g))  # prompts of differing length: real padding
        prompt = torch.randint(3, vocab, (n,), generator=g).tolist()
        for _ in range(samples):
            prompt_ids.append(prompt)
            completion_ids.append(torch.randint(3, vocab, (completion_len,), generator=g).tolist())
            rewards.append(float(torch.rand((), generator=g)))
            groups.append(p)
    return prompt_ids, completion_ids, rewards, groups


def head_bench(vocab: int, dtype: str, reps: int) -> dict:
    """The logprob computation alone where the LM head matters: the `small` tiny model's shape with a ``vocab``-sized
    head (random weights, LoRA r16 on the seven projections), one micro-batch of 16 x (32 + 128) tokens, loss on the
    128 completion tokens: forward + backward time and the bytes autograd saves for backward, by the plain path
    (full [B, L, V] logits) and the lean one (``positions``)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from cluster.memory import SavedForBackward
    from learners.logprobs import sequence_logprobs
    from learners.models import DTYPES, attach_lora
    from tinymodels.factory import PRESETS

    torch.manual_seed(0)
    p = PRESETS["small"]
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=p.hidden_size, num_hidden_layers=p.num_hidden_layers,
                      num_attention_heads=p.num_attention_heads, num_key_value_heads=p.num_key_value_heads,
                      intermediate_size=p.intermediate_size, head_dim=64, tie_word_embeddings=True)
    model = attach_lora(Qwen3ForCausalLM(cfg).to(DTYPES[dtype]))
    model.train()
    B, P, C = 16, 32, 128
    ids = torch.randint(3, vocab, (B, P + C))
    att = torch.ones_like(ids)
    want = torch.zeros(B, P + C - 1)
    want[:, P - 1:] = 1
    out = {"vocab": vocab, "dtype": dtype}
    for name, positions in (("plain", None), ("lean", want)):

        times = []
        for r in range(reps + 1):
            t0 = time.perf_counter()
            with SavedForBackward(model) as saved:
                lp, ent = sequence_logprobs(model, ids, att, True, 1.0, positions=positions, entropy_grad=False)
            (-(lp * want).sum() / want.sum()).backward()
            if r > 0:
                times.append(time.perf_counter() - t0)
        out[name] = {"fwd_bwd_s": {"min": min(times), "median": statistics.median(times), "max": max(times)},
                     "saved_for_backward_mib": saved.bytes / 2**20}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32", help="model.dtype (float32, bfloat16, auto where supported)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    ap.add_argument("--micro-batch", type=int, default=16, help="train.micro_batch_size")
    ap.add_argument("--kl-coef", type=float, default=0.02)
    ap.add_argument("--set", nargs="*", default=[], help="more config overrides (key=value)")
    ap.add_argument("--json", default="", help="append one JSON line of results to this file")
    ap.add_argument("--head-vocab", type=int, default=0,
                    help="instead of the step: time the logprob forward+backward, plain vs lean, at this vocabulary size")
    args = ap.parse_args()
    if args.head_vocab:
        out = head_bench(args.head_vocab, args.dtype, args.steps)
        print(json.dumps(out))
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(out | {"argv": sys.argv[1:]}) + "\n")
        return

    from actors.learner import LearnerWorker
    from config import Config, load
    from tinymodels import ensure_tiny_model

    repo = Path(__file__).resolve().parents[1]
    model_dir = ensure_tiny_model(repo / ".cache", "small", 0)
    cfg = load(Config, "tiny-cpu", ["model.preset=small", f"model.dtype={args.dtype}", f"algo.kl_coef={args.kl_coef}",
                                    f"train.micro_batch_size={args.micro_batch}", "train.mini_batches=1",
                                    "train.epochs=1", "train.lr=1e-4", *args.set])
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    w = LearnerWorker(str(model_dir), cfg.model, cfg.algo, cfg.train, seed=0)
    rows = []
    for s in range(args.steps + 1):
        p, c, r, g = batch(s, vocab=vocab)
        t0, c0 = time.perf_counter(), time.process_time()
        m = w.step(p, c, r, g)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        row = {"step": s, "wall": wall, "cpu": cpu, "logprobs": m["time_logprobs"], "update": m["time_update"],
               "loss": m["loss"], "kl": m.get("kl_loss", 0.0)}
        print(json.dumps(row), flush=True)
        if s > 0:  # step 0 warms up allocators and kernels
            rows.append(row)
    summary = {"dtype": args.dtype, "threads": torch.get_num_threads(), "steps": len(rows)}
    for k in ("wall", "cpu", "logprobs", "update"):
        xs = [r[k] for r in rows]
        summary[k] = {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}
    print(json.dumps(summary))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(summary | {"argv": sys.argv[1:]}) + "\n")


if __name__ == "__main__":
    main()
