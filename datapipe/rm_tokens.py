"""A reward model's tokenisation: (prompt, response) text pairs for outcome scores, and solutions read step by
step for process scores (the last token of every step, or one sequence per prefix for an encoder).
"""
from __future__ import annotations

from datapipe.tokens import render_prompt

def rm_text(tokenizer, prompt: str | list[dict], response: str) -> tuple[str, str]:
    """What a reward model reads: (rendered prompt, response) as a text pair -- ``tokenizer(prompt, response)``,
    which is [CLS] p [SEP] r [SEP] for an encoder and p followed by r for a byte-level decoder tokenizer; the
    ``reward_model`` scorer reads (prompt, completion) the same way."""
    return render_prompt(tokenizer, prompt), response


def encode_rm(tokenizer, prompts: list, responses: list[str], max_len: int):
    """Batch of (prompt, response) text pairs -> (input_ids, attention_mask), truncating the prompt's start first
    so the response -- what is judged -- survives."""
    texts = [rm_text(tokenizer, p, r) for p, r in zip(prompts, responses)]
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        enc = tokenizer([t[0] for t in texts], [t[1] for t in texts], padding=True, truncation="only_first",
                        max_length=max_len, return_tensors="pt")
    except Exception:  # a pair too long even with the prompt gone: cut the whole pair
        enc = tokenizer([t[0] for t in texts], [t[1] for t in texts], padding=True, truncation=True,
                        max_length=max_len, return_tensors="pt")
    finally:
        tokenizer.truncation_side = side
    return enc["input_ids"], enc["attention_mask"]


def step_prefixes(row: dict, separator: str = "\n") -> list[str]:
    """The solution text up to and including each step: s_1, s_1 + sep + s_2, ..."""
    steps = row["completions"]
    return [separator.join(steps[:k + 1]) for k in range(len(steps))]


def encode_steps(tokenizer, rows: list[dict], max_len: int, bidirectional: bool, separator: str = "\n"):
    """Inputs for step scores. A causal model reads each solution once and is scored at the last token of every
    step (the value there sees exactly the prefix up to that step); an encoder, which would see later steps, reads
    one sequence per prefix and is scored where its classifier reads. Returns (input_ids, attention_mask,
    positions) where ``positions`` is a list of (sequence index, token index or -1 for the pooled score) per step,
    and the flat step labels."""
    import torch

    labels = [bool(b) for r in rows for b in r["labels"]]
    if bidirectional:
        prompts = [r["prompt"] for r in rows for _ in r["completions"]]
        texts = [p for r in rows for p in step_prefixes(r, separator)]
        ids, mask = encode_rm(tokenizer, prompts, texts, max_len)
        return ids, mask, [(i, -1) for i in range(len(texts))], torch.tensor(labels)
    seqs, positions = [], []
    for i, r in enumerate(rows):
        prompt_ids = tokenizer(render_prompt(tokenizer, r["prompt"]), add_special_tokens=False)["input_ids"]
        ids = list(prompt_ids)
        for k, step in enumerate(r["completions"]):
            ids += tokenizer((separator if k else "") + step, add_special_tokens=False)["input_ids"]
            positions.append((i, len(ids) - 1))
        seqs.append(ids)
    # Keep the end (the steps); shift positions by what is cut from the start.
    cut = [max(0, len(s) - max_len) for s in seqs]
    seqs = [s[c:] for s, c in zip(seqs, cut)]
    positions = [(i, t - cut[i]) for i, t in positions]
    keep = [j for j, (i, t) in enumerate(positions) if t >= 0]
    L = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(seqs), L), pad, dtype=torch.long)
    attention = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, :len(s)] = torch.tensor(s)
        attention[i, :len(s)] = 1
    return input_ids, attention, [positions[j] for j in keep], torch.tensor([labels[j] for j in keep])
