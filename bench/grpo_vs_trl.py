"""Seconds per GRPO step: this project (Ray + vLLM CPU engine + QLoRA learner) vs TRL's GRPOTrainer,
on the same model, prompts, group size, completion length, reward and LoRA shape, one after the other.

    .venv/bin/python bench/grpo_vs_trl.py [--steps 6] [--preset tiny] [--warm 120] [--prompts 32]

Step 0 of each is warm-up and not counted. The last line printed is a JSON object with
ours_s_per_step, trl_s_per_step and ratio (trl / ours: > 1 means ours is faster).
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


def run_ours(args, model_path: str, out: Path) -> float:
    cmd = [sys.executable, str(REPO / "pipelines" / "grpo.py"), f"model.path={model_path}", "data.warm_start_steps=0",
           f"train.steps={args.steps + 1}", f"train.prompts_per_step={args.prompts}", f"rollout.n_samples={args.group}",
           f"rollout.max_new_tokens={args.max_tokens}", f"model.lora.r={args.rank}", f"model.lora.alpha={2 * args.rank}",
           f"model.finetune={args.finetune}", f"train.lr={args.lr}", f"algo.kl_coef={args.beta}", "train.heldout_prompts=8",
           "rollout.temperature=1.0",  # TRL's below samples at 1.0 too (the demo's own default is 0.8)
           "checkpoint.every=0", "progress=false", "tensorboard=false", f"runs_dir={out}", "run_name=bench"]
    subprocess.run(cmd, check=True)
    rows = [json.loads(line) for line in (out / "bench" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["time/step"] for r in rows[1:]]
    return sum(steps) / len(steps)


def run_trl(args, model_path: str, out: Path) -> float:
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
                     use_cpu=True, bf16=False, model_init_kwargs=init_kwargs, disable_tqdm=True, seed=0)
    peft = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                             "gate_proj", "up_proj", "down_proj"],
                      task_type="CAUSAL_LM")
    t0 = time.time()
    trainer = GRPOTrainer(model=model_path, reward_funcs=reward, args=cfg, train_dataset=ds, peft_config=peft,
                          callbacks=[Stamp()])
    trainer.train()
    gaps = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    print(f"[bench] TRL: {len(stamps)} steps in {time.time() - t0:.1f}s", flush=True)
    return sum(gaps) / len(gaps)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after one warm-up step)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--warm", type=int, default=120, help="warm-start steps (so both learn from a non-zero reward)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--beta", type=float, default=0.02)
    ap.add_argument("--finetune", default="qlora", choices=["qlora", "lora"])
    args = ap.parse_args()

    from tasks.arithmetic import make_rows, solution
    from tasks.warm_start import warm_start
    from tinymodels import ensure_tiny_model

    model = ensure_tiny_model(REPO / ".cache", args.preset, 0)
    if args.warm:
        model = warm_start(model, make_rows(2000, seed=1000), solution, args.warm, REPO / ".cache" / "warm")
    with tempfile.TemporaryDirectory() as d:
        ours = run_ours(args, str(model), Path(d))
        trl = run_trl(args, str(model), Path(d))
    res = {"ours_s_per_step": round(ours, 3), "trl_s_per_step": round(trl, 3), "ratio": round(trl / ours, 3),
           "preset": args.preset, "prompts": args.prompts, "group": args.group, "max_tokens": args.max_tokens,
           "finetune": args.finetune, "steps": args.steps}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
