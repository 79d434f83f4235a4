"""Held-out likelihood with transformers: which tokens of a row count, and their log-probabilities under a
model or model + adapter. The perplexity formula itself is :func:`evalpanel.metrics.perplexity`.
"""
from __future__ import annotations

import os

import torch

from learners.logprobs import sequence_logprobs


def scored_tokens(tokenizer, row: dict) -> tuple[list[int], list[int]]:
    """Token ids of one held-out row and the 0/1 mask of the tokens its perplexity counts.

    Rows come in the training formats: ``text`` (every token but the first), ``messages`` (the assistant
    turns, from the chat template's generation marks), or ``prompt`` + ``completion`` (the completion; a
    list-of-messages prompt goes through the chat template, a string prompt is taken as raw text, as TRL
    does). Raises ValueError naming the columns it expected.
    """
    if "text" in row:
        ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        return ids, [0] + [1] * (len(ids) - 1)
    if "messages" in row:
        return _chat(tokenizer, row["messages"])
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list):
            reply = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
            return _chat(tokenizer, prompt + reply)
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        return p + c, [0] * len(p) + [1] * len(c)
    raise ValueError(f"a perplexity row needs 'text', 'messages' or 'prompt'+'completion'; got columns {sorted(row)}")


def _chat(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    enc = tokenizer.apply_chat_template(messages, return_assistant_tokens_mask=True, return_dict=True)
    return list(enc["input_ids"]), list(enc["assistant_masks"])


@torch.no_grad()
def heldout_logprobs(model, tokenizer, rows: list[dict], batch_size: int = 8, max_len: int = 1024) -> torch.Tensor:
    """log p(x_t | x_<t) of every counted token of ``rows``, concatenated into one 1-D tensor
    (feed it to ``metrics.perplexity`` with a mask of ones). Rows longer than ``max_len`` are cut."""
    encoded = [scored_tokens(tokenizer, r) for r in rows]
    encoded = [(ids[:max_len], mask[:max_len]) for ids, mask in encoded]
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        # Right padding: a causal model's real tokens never see the pads after them.
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in chunk], device=device)
        attn = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in chunk], device=device)
        mask = torch.tensor([m + [0] * (width - len(m)) for _, m in chunk], device=device)
        lp = sequence_logprobs(model, ids, attn)  # [B, L-1], scores ids[:, 1:]
        out.append(lp[mask[:, 1:].bool()].float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def load_scoring_model(model_path: str | os.PathLike, adapter_path: str | os.PathLike | None = None,
                       dtype: str = "float32"):
    """The evaluated weights in transformers: the base in ``dtype`` (not 4-bit: the perplexity of the served
    model, not of its quantised training copy) plus the PEFT adapter when given."""
    from learners.models import load_policy

    if adapter_path:
        model, tok = load_policy(model_path, finetune="lora", dtype=dtype, adapter_path=adapter_path)
    else:
        model, tok = load_policy(model_path, finetune="full", dtype=dtype)
    model.requires_grad_(False)
    return model.eval(), tok
