"""A short supervised warm start on a built-in task, so that an RL demo's reward is not zero at step 0.

It trains the whole (tiny) model on prompt -> reference completion with the loss on completion tokens
only, then saves a full model folder that becomes the RL run's base. Cached by its inputs.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch


def _encode(tok, row: dict, solution: str) -> tuple[list[int], int]:
    prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    p_ids = tok(prompt, add_special_tokens=False).input_ids
    c_ids = tok(solution + tok.eos_token, add_special_tokens=False).input_ids
    return p_ids + c_ids, len(p_ids)


def warm_start(model_dir: str | os.PathLike, rows: list[dict], solution_fn, steps: int, out_root: str | os.PathLike,
               lr: float = 3e-3, batch_size: int = 32, seed: int = 0, log_every: int = 50) -> Path:
    """Fine-tune ``model_dir`` for ``steps`` steps of ``batch_size`` rows; return the saved folder (cached)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from learners.logprobs import gather_logprobs

    key = hashlib.sha1(json.dumps([str(Path(model_dir).resolve()), steps, lr, batch_size, seed, len(rows),
                                   rows[0], rows[-1]], default=str).encode()).hexdigest()[:10]
    final = Path(out_root).resolve() / f"warm-{Path(model_dir).name}-{steps}-{key}"
    if (final / "warm_start.json").exists():
        return final
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        # On an oversubscribed machine, OpenMP threads spin against each other: one thread was 7-20x
        # faster than two here at load 15 on 2 cores.
        torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / max(1, steps)))
    encoded = [_encode(tok, r, solution_fn(r)) for r in rows]
    t0, losses = time.time(), []
    for step in range(steps):
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(batch_size)]
        L = max(len(ids) for ids, _ in batch)
        ids = torch.full((batch_size, L), tok.pad_token_id, dtype=torch.long)
        att = torch.zeros((batch_size, L), dtype=torch.long)
        mask = torch.zeros((batch_size, L - 1))
        for i, (x, p) in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(x)
            att[i, : len(x)] = 1
            mask[i, p - 1: len(x) - 1] = 1.0
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
        lp = gather_logprobs(logits, ids[:, 1:])
        loss = -(lp * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"[warm start] step {step + 1}/{steps} loss {sum(losses[-log_every:]) / log_every:.3f} "
                  f"({time.time() - t0:.0f}s)", flush=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    for extra in ("tiny_model.json",):
        if Path(model_dir, extra).exists():
            shutil.copy(Path(model_dir, extra), tmp / extra)
    (tmp / "warm_start.json").write_text(json.dumps({"steps": steps, "final_loss": losses[-1] if losses else None,
                                                     "seconds": time.time() - t0, "source": str(model_dir)}))
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
