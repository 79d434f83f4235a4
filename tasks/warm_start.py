"""A short supervised warm start on a built-in task, so that an RL demo's reward is not zero at step 0.

It trains the whole (tiny) model on prompt -> reference completion with the loss on completion tokens
only, then saves a full model folder that becomes the RL run's base. Cached by its inputs.

A reference completion may also be a tool-using conversation (the messages after the prompt: assistant turns with
``<tool_call>`` blocks, tool results, the final answer): it is tokenised piece by piece exactly as the multi-turn
rollout builds a trajectory (actors/multiturn.py) -- each assistant turn's ids then its end-of-turn token, each
run of tool results as envs/chat.py's tool_turn_text -- with the loss on the assistant turns only.
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


def _encode(tok, row: dict, solution, tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
    """(token ids, loss mask over ids[1:]) of prompt + ``solution`` (a completion string, or the messages that
    follow the prompt in a tool-using conversation)."""
    prompt = tok.apply_chat_template(row["prompt"], tools=tools or None, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False).input_ids
    mask = [0] * (len(ids) - 1)
    if isinstance(solution, str):
        solution = [{"role": "assistant", "content": solution}]
    i = 0
    while i < len(solution):
        if solution[i]["role"] == "assistant":
            piece, on = tok(solution[i]["content"] + tok.eos_token, add_special_tokens=False).input_ids, 1
            i += 1
        else:  # a run of tool results, then the next assistant turn's generation prompt
            from envs.chat import tool_turn_text

            j = i
            while j < len(solution) and solution[j]["role"] != "assistant":
                j += 1
            piece, on = tok(tool_turn_text(tok, solution[i:j], tools or None), add_special_tokens=False).input_ids, 0
            i = j
        ids += piece
        mask += [on] * len(piece)
    return ids, mask


def warm_start(model_dir: str | os.PathLike, rows: list[dict], solution_fn, steps: int, out_root: str | os.PathLike,
               lr: float = 3e-3, batch_size: int = 32, seed: int = 0, log_every: int = 50,
               tools: list[dict] | None = None) -> Path:
    """Fine-tune ``model_dir`` for ``steps`` steps of ``batch_size`` rows; return the saved folder (cached).
    ``solution_fn(row)`` gives the reference completion (a string, or the messages after the prompt); ``tools``
    are the tool schemas the prompts offer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from learners.logprobs import gather_logprobs

    key = hashlib.sha1(json.dumps([str(Path(model_dir).resolve()), steps, lr, batch_size, seed, len(rows),
                                   rows[0], rows[-1]] + ([solution_fn(rows[0]), tools] if tools else []),
                                  default=str).encode()).hexdigest()[:10]
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
    encoded = [_encode(tok, r, solution_fn(r), tools) for r in rows]
    t0, losses = time.time(), []
    for step in range(steps):
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(batch_size)]
        L = max(len(ids) for ids, _ in batch)
        ids = torch.full((batch_size, L), tok.pad_token_id, dtype=torch.long)
        att = torch.zeros((batch_size, L), dtype=torch.long)
        mask = torch.zeros((batch_size, L - 1))
        for i, (x, m) in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(x)
            att[i, : len(x)] = 1
            mask[i, : len(m)] = torch.tensor(m, dtype=mask.dtype)
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
