"""Seconds per GRPO step: this project (Ray + vLLM CPU engine + QLoRA learner) vs TRL's GRPOTrainer,
on the same model, prompts, group size, completion length, reward, LoRA shape and micro-batch, one after the other.

    .venv/bin/python bench/grpo_vs_trl.py --config heavy     # small (25M), 8 prompts x 4, 128 tokens: generation-heavy
    .venv/bin/python bench/grpo_vs_trl.py --config demo      # tiny (0.36M), 32 prompts x 8, 16 tokens: the demo's shape
    .venv/bin/python bench/grpo_vs_trl.py --config heavy --staleness 1 --ours-only   # asynchronous rollout

Step 0 of each side is warm-up and not counted; figures are medians over the timed steps. Ours is timed from the
pipeline's own time/step (everything a step costs: generate, score, reference/old logprobs, update, weight sync and
its verification, logging); TRL's from step end to step end (gradient checkpointing off, as ours). Beside ours the
phases and the floor: generate + one training pass over the same tokens (the update), which no schedule of the same
work can beat in synchronous mode. The last line is a JSON object with ours_s_per_step, trl_s_per_step and ratio
(trl / ours: > 1 means ours is faster).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


CONFIGS = {  # the shapes of issue 17's table
    "heavy": dict(preset="small", warm=0, prompts=8, group=4, max_tokens=128),
    "demo": dict(preset="tiny", warm=120, prompts=32, group=8, max_tokens=16),
}


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def run_ours(args, model_path: str, out: Path) -> dict:
    cmd = [sys.executable, str(REPO / "pipelines" / "grpo.py"), f"model.path={model_path}", "data.warm_start_steps=0",
           f"train.steps={args.steps + 1}", f"train.prompts_per_step={args.prompts}", f"rollout.n_samples={args.group}",
           f"rollout.max_new_tokens={args.max_tokens}", f"model.lora.r={args.rank}", f"model.lora.alpha={2 * args.rank}",
           f"model.finetune={args.finetune}", f"train.lr={args.lr}", f"algo.kl_coef={args.beta}", "train.heldout_prompts=8",
           "rollout.temperature=1.0",  # TRL's below samples at 1.0 too (the demo's own default is 0.8)
           f"train.micro_batch_size={args.prompts * args.group}", f"rollout.max_model_len={args.max_tokens + 128}",
           f"train.max_staleness={args.staleness}", f"model.dtype={args.dtype}", f"rollout.weight_sync={args.weight_sync}",
           "checkpoint.every=0", "progress=false", "tensorboard=false", f"runs_dir={out}", "run_name=bench",
           *args.ours_args]
    subprocess.run(cmd, check=True)
    rows = [json.loads(line) for line in (out / "bench" / "metrics.jsonl").read_text().splitlines()][1:]
    phases = {k: round(median([r[f"time/{k}"] for r in rows]), 3)
              for k in ("generate", "score", "logprobs", "reference_wait", "update", "sync", "sync_export", "sync_load", "sync_verify",
                        "step")
              if f"time/{k}" in rows[0]}
    floor = median([r["time/generate"] + r["time/update"] for r in rows])
    conf = json.loads((out / "bench" / "config.json").read_text()).get("resolved", {})
    return {"s_per_step": phases["step"], "phases": phases, "floor": round(floor, 3),
            "step_over_floor": round(phases["step"] / floor, 3), "resolved": conf,
            "staleness_max": max(r.get("rollout/staleness_max", 0) for r in rows)}


def run_trl(args, model_path: str, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards.base import Item
    from rewards.compose import WeightedScorer
    from tasks.arithmetic import make_rows

    rows = make_rows(2000, seed=0)
    ds = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    scorer = WeightedScorer({"json_valid": 0.2, "exact_answer": 1.0})

    def reward(prompts, completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [r.score or 0.0 for r in scorer.score([Item("", t, a) for t, a in zip(texts, answer)])]

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.time())

    init_kwargs = {"dtype": torch.float32}
    if args.finetune == "qlora":
        init_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
        init_kwargs["device_map"] = {"": "cpu"}
    cfg = GRPOConfig(output_dir=str(out / "trl"), max_steps=args.steps + 1, per_device_train_batch_size=args.prompts * args.group,
                     num_generations=args.group, max_completion_length=args.max_tokens, temperature=1.0,
                     learning_rate=args.lr, beta=args.beta, logging_steps=1, save_strategy="no", report_to=[],
                     use_cpu=True, bf16=False, model_init_kwargs=init_kwargs, disable_tqdm=True, seed=0,
                     gradient_checkpointing=False)  # TRL turns it on by default; ours is off: compare the same work
    peft = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                             "gate_proj", "up_proj", "down_proj"],
                      task_type="CAUSAL_LM")
    t0 = time.time()
    trainer = GRPOTrainer(model=model_path, reward_funcs=reward, args=cfg, train_dataset=ds, peft_config=peft,
                          callbacks=[Stamp()])
    trainer.train()
    gaps = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    print(f"[bench] TRL: {len(stamps)} steps in {time.time() - t0:.1f}s", flush=True)
    return {"s_per_step": round(median(gaps), 3), "steps_s": [round(g, 3) for g in gaps]}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", choices=sorted(CONFIGS), default="demo", help="the shape: " + "; ".join(
        f"{k}: {v}" for k, v in CONFIGS.items()))
    ap.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up step)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--beta", type=float, default=0.02)
    ap.add_argument("--finetune", default="qlora", choices=["qlora", "lora"])
    ap.add_argument("--dtype", default="auto", help="ours: model.dtype (auto = bfloat16 where the CPU has it)")
    ap.add_argument("--weight-sync", default="auto", choices=["auto", "lora", "merged"])
    ap.add_argument("--staleness", type=int, default=0, help="ours: train.max_staleness")
    ap.add_argument("--ours-only", action="store_true")
    ap.add_argument("--ours-args", nargs="*", default=[], help="more key=value for pipelines/grpo.py")
    args = ap.parse_args()
    for k, v in CONFIGS[args.config].items():
        setattr(args, k, v)

    from tasks.arithmetic import make_rows, solution
    from tasks.warm_start import warm_start
    from tinymodels import ensure_tiny_model

    model = ensure_tiny_model(REPO / ".cache", args.preset, 0)
    if args.warm:
        model = warm_start(model, make_rows(2000, seed=1000), solution, args.warm, REPO / ".cache" / "warm")
    cpu = sorted(set(Path("/proc/cpuinfo").read_text().split()) & {"avx512_bf16", "amx_bf16"}) if Path("/proc/cpuinfo").exists() else []
    with tempfile.TemporaryDirectory() as d:
        ours = run_ours(args, str(model), Path(d))
        print(f"[bench] ours: {json.dumps(ours)}", flush=True)
        trl = None if args.ours_only else run_trl(args, str(model), Path(d))
    res = {"config": args.config, "ours_s_per_step": ours["s_per_step"], "trl_s_per_step": trl and trl["s_per_step"],
           "ratio": trl and round(trl["s_per_step"] / ours["s_per_step"], 3), "ours": ours, "trl": trl,
           "preset": args.preset, "prompts": args.prompts, "group": args.group, "max_tokens": args.max_tokens,
           "finetune": args.finetune, "steps": args.steps, "staleness": args.staleness, "cpu_flags": cpu}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
