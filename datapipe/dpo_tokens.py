"""DPO's tokenisation: a pair -> token ids of prompt + chosen and prompt + rejected (as TRL's DPOTrainer builds
them), and a batch of them -> padded tensors with the completion mask aligned to the next-token log-probs.
"""
from __future__ import annotations

def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n



def encode_policy_pair(tokenizer, row: dict, max_len: int) -> dict:
    """Token ids of prompt + chosen and prompt + rejected, as TRL's DPOTrainer builds them: a conversational pair
    through the chat template, a plain one as prompt + response + EOS; the completion starts where the tokenised
    prompt and the tokenised whole diverge. Sequences longer than ``max_len`` keep their start."""
    def ids(text=None, messages=None, gen=False):
        if messages is not None:
            return tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen,
                                                 return_dict=True)["input_ids"]
        return tokenizer(text, add_special_tokens=True)["input_ids"]

    prompt = row["prompt"]
    if isinstance(prompt, str):
        eos = tokenizer.eos_token
        ends = {k: row[k] if row[k].endswith(eos) else row[k] + eos for k in ("chosen", "rejected")}
        p = ids(prompt)
        full = {k: ids(prompt + ends[k]) for k in ends}
    else:
        p = ids(messages=prompt, gen=True)
        full = {k: ids(messages=list(prompt) + [{"role": "assistant", "content": row[k]}])
                for k in ("chosen", "rejected")}
    n = min(common_prefix_length(p, full["chosen"]), common_prefix_length(p, full["rejected"]))
    out = {}
    for k, seq in full.items():
        seq = list(seq)[:max_len]
        out[f"{k}_ids"] = seq
        out[f"{k}_start"] = min(n, len(seq))
    return out


def collate_policy_pairs(encoded: list[dict], pad_id: int):
    """[chosen_1..chosen_B, rejected_1..rejected_B] right-padded, with the completion mask aligned to the
    next-token log-probs (mask[:, t] scores input_ids[:, t + 1], as ``learners.logprobs.sequence_logprobs``)."""
    import torch

    seqs = [e["chosen_ids"] for e in encoded] + [e["rejected_ids"] for e in encoded]
    starts = [e["chosen_start"] for e in encoded] + [e["rejected_start"] for e in encoded]
    L = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), L), dtype=torch.long)
    completion = torch.zeros((len(seqs), L - 1), dtype=torch.float32)
    for i, (s, st) in enumerate(zip(seqs, starts)):
        input_ids[i, :len(s)] = torch.tensor(s)
        attention[i, :len(s)] = 1
        completion[i, max(st - 1, 0):len(s) - 1] = 1.0
    return input_ids, attention, completion
