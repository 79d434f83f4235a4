"""Pairwise judges for win-rate: each returns, per item, its preference for the response shown *first*
(1 first wins, 0 second wins, 0.5 tie); evalpanel.metrics.win_rate turns both orders into a win-rate.

- :class:`ModelJudge`: a causal LM shown the question and two responses and asked "1 or 2?"; its verdict is
  the likelier next token (the LLM-as-a-judge of Zheng et al. 2023, read from logits instead of sampled text,
  so that a small judge cannot answer off-format). It reads the pair in order, so it can be position-biased.
- :class:`RewardModelJudge`: a reward model scores each response on its own (rewards' ``reward_model``
  scorer); the higher score wins. It cannot see the order, so swapping changes nothing -- by construction.
"""
from __future__ import annotations

import os

import torch

from evalpanel.metrics import preference_from_scores

JUDGE_PROMPT = ("Which response answers the question better?\n\nQuestion:\n{question}\n\n"
                "Response 1:\n{first}\n\nResponse 2:\n{second}\n\nReply with 1 or 2.")


def question_text(prompt) -> str:
    """The question a judge reads: a string prompt as it is, or the last user turn of a chat prompt."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if m.get("role") == "user"]
    return users[-1] if users else "\n".join(m.get("content", "") for m in prompt)


class ModelJudge:
    """LLM-as-a-judge with transformers: preference = [log p("1") > log p("2")] after the judge prompt."""

    def __init__(self, model_path: str | os.PathLike, adapter_path: str | os.PathLike | None = None,
                 batch_size: int = 8, max_len: int = 1024):
        from evalpanel.likelihood import load_scoring_model

        self.model, self.tok = load_scoring_model(model_path, adapter_path)
        self.batch_size, self.max_len = batch_size, max_len
        # The first token of "1" / "2": single tokens in every byte-level BPE vocabulary we load.
        self.ids = [self.tok.encode(c, add_special_tokens=False)[0] for c in ("1", "2")]

    def _encode(self, prompt, first: str, second: str) -> list[int]:
        text = JUDGE_PROMPT.format(question=question_text(prompt), first=first, second=second)
        msgs = [{"role": "user", "content": text}]
        if self.tok.chat_template:
            ids = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        else:
            ids = self.tok(text + "\nAnswer: ", add_special_tokens=False)["input_ids"]
        return list(ids)[-self.max_len:]  # keep the end: the question of "1 or 2" sits there

    @torch.no_grad()
    def prefer(self, prompts: list, first: list[str], second: list[str]) -> torch.Tensor:
        seqs = [self._encode(p, a, b) for p, a, b in zip(prompts, first, second)]
        device = next(self.model.parameters()).device
        pad = self.tok.pad_token_id or 0
        out = []
        for s in range(0, len(seqs), self.batch_size):
            chunk = seqs[s:s + self.batch_size]
            width = max(map(len, chunk))
            ids = torch.tensor([c + [pad] * (width - len(c)) for c in chunk], device=device)
            attn = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in chunk], device=device)
            logits = self.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            last = logits[torch.arange(len(chunk)), attn.sum(1) - 1].float()  # right padding: the last real position
            lp = torch.log_softmax(last, -1)[:, self.ids]
            out.append(preference_from_scores(lp[:, 0], lp[:, 1]).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


class RewardModelJudge:
    """A reward model as judge: each response is scored alone; the higher reward wins (ties count half)."""

    def __init__(self, model_path: str | os.PathLike, **options):
        from rewards.registry import make_scorer

        self.scorer = make_scorer("reward_model", model_path=str(model_path), **options)

    def _scores(self, prompts: list, answers: list[str]) -> torch.Tensor:
        from rewards.base import Item

        from datapipe.preference import render_prompt

        # The prompt as the reward-model trainer renders it (its own tokenizer's chat template), so that the
        # judge reads pairs the way it was trained on them.
        tok = self.scorer.tokenizer
        res = self.scorer.score([Item(prompt=render_prompt(tok, p), completion=a) for p, a in zip(prompts, answers)])
        bad = [r for r in res if r.score is None]
        if bad:
            raise RuntimeError(f"the reward-model judge could not score {len(bad)} of {len(res)} answers "
                               f"(first: {bad[0].status} {bad[0].details})")
        return torch.tensor([r.score for r in res], dtype=torch.float64)

    def prefer(self, prompts: list, first: list[str], second: list[str]) -> torch.Tensor:
        return preference_from_scores(self._scores(prompts, first), self._scores(prompts, second))
