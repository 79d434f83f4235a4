"""The LLM learner's model as a :class:`continual.loop.Learner`: next-token prediction on token sequences.

Examples are ``{"input_ids": [...], "labels": [...]}`` (labels optional, -100 = not scored, e.g. the prompt
of a prompt/completion pair). A unit is a position: logits [B * (L-1), V], targets the next tokens, so every
strategy that speaks logits and targets (replay, EWC, LwF, per-task LoRA) works on the language model.
"""
from __future__ import annotations

from typing import Sequence

import torch

from continual.learner import Learner


def encode_texts(tokenizer, texts: Sequence[str], max_length: int = 128) -> list[dict]:
    """Plain texts -> examples scored on every token after the first."""
    out = []
    for i, t in enumerate(texts):
        ids = tokenizer(t, truncation=True, max_length=max_length)["input_ids"]
        if len(ids) < 2:
            raise ValueError(f"text {i} ({t!r}) has fewer than 2 tokens: nothing to predict")
        out.append({"input_ids": list(ids)})
    return out


def collate_tokens(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padded positions get label -100 and attention 0."""
    L = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), L), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), L), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), L), dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[b, :n] = torch.tensor(e["input_ids"])
        labels[b, :n] = torch.tensor(e.get("labels", e["input_ids"]))
        mask[b, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lm_forward(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """logits of positions 0..L-2 against the tokens 1..L-1, flattened to [B * (L-1), V] and [B * (L-1)]."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    logits = out.logits[:, :-1]
    return logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1)


def lm_embed(model, batch) -> torch.Tensor:
    """Mean of the last hidden states over a sequence's real tokens ([B, hidden])."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                output_hidden_states=True)
    h = out.hidden_states[-1].float()
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def causal_lm_learner(model, tokenizer, lr: float = 1e-4, batch_size: int = 8, epochs: int = 1,
                      seed: int = 0) -> Learner:
    """A learner for a causal LM (e.g. ``learners.models.load_policy(path, finetune="qlora")``)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Learner(model=model, forward=lm_forward, collate=lambda exs: collate_tokens(exs, pad), embed=lm_embed,
                   lr=lr, batch_size=batch_size, epochs=epochs, seed=seed, eval_batch_size=batch_size,
                   extra={"tokenizer": tokenizer})
