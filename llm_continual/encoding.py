"""Rows -> token examples for the continual learner (``{"input_ids", "labels"}``, labels -100 where not scored).

Pre-training text is scored on every token after the first; a chat on its assistant turns (the chat template's
generation marks); a response to a prompt on the response's tokens, found where the tokenised prompt and the
tokenised whole diverge (as TRL builds preference pairs). Longer sequences keep their start.
"""
from __future__ import annotations

import torch

from continual.causal_lm import collate_tokens
from learners.logprobs import gather_logprobs

IGNORE = -100


def lm_example(tok, row: dict, phase: str, max_len: int) -> dict:
    if phase == "cpt":
        ids = tok(row["text"] + (tok.eos_token or ""), add_special_tokens=False)["input_ids"][:max_len]
        return {"input_ids": ids, "labels": list(ids)}
    enc = tok.apply_chat_template(row["messages"], return_assistant_tokens_mask=True, return_dict=True)
    ids, mask = list(enc["input_ids"])[:max_len], list(enc["assistant_masks"])[:max_len]
    return {"input_ids": ids, "labels": [t if m else IGNORE for t, m in zip(ids, mask)]}


def response_example(tok, prompt: list[dict], response: str, max_len: int) -> dict:
    """prompt + response through the chat template, labels on the response only."""
    from datapipe.preference import common_prefix_length

    p = tok.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    full = tok.apply_chat_template(list(prompt) + [{"role": "assistant", "content": response}], tokenize=True,
                                   return_dict=True)["input_ids"]
    start = common_prefix_length(list(p), list(full))
    full = list(full)[:max_len]
    return {"input_ids": full, "labels": [IGNORE] * min(start, len(full)) + full[start:]}


def group_example(tok, row: dict, max_len: int) -> dict:
    """An alignment row (prompt, graded responses) -> its responses as examples, their scores, the best one."""
    scores = [float(s) for s in row["scores"]]
    return {"uid": row["uid"], "responses": [response_example(tok, row["prompt"], r, max_len) for r in row["responses"]],
            "scores": scores, "best": max(range(len(scores)), key=scores.__getitem__)}


def collate_groups(examples: list[dict], pad_id: int) -> dict:
    """A batch of alignment groups: every response flattened (``all``, ``group_ids``, ``scores``), the best
    response of each group as an LM batch (``best``: what EWC's Fisher and LwF's teacher look at), and the
    examples themselves (for per-response numbers a strategy attached to them)."""
    flat = [r for e in examples for r in e["responses"]]
    return {"all": collate_tokens(flat, pad_id),
            "group_ids": torch.tensor([g for g, e in enumerate(examples) for _ in e["responses"]]),
            "scores": torch.tensor([s for e in examples for s in e["scores"]], dtype=torch.float32),
            "best": collate_tokens([e["responses"][e["best"]] for e in examples], pad_id),
            "examples": examples}


def token_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(x_t | x_<t) [B, L-1], mask [B, L-1] of the scored tokens) for a ``collate_tokens`` batch."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    lp = gather_logprobs(out.logits[:, :-1], batch["input_ids"][:, 1:])
    return lp, (batch["labels"][:, 1:] != IGNORE).to(lp.dtype)
