"""Evaluation-panel options (see evalpanel/ and pipelines/eval.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from config.loader import check


@dataclass
class EvalConfig:
    suites: list[str] = field(default_factory=lambda: ["heldout", "arithmetic", "code", "chat"])
    """Suites to run: built-in names (evalpanel/suites/*.yaml), paths to suite cards, or perplexity:DATA / win_rate:DATA."""
    checkpoints: list[str] = field(default_factory=lambda: ["base"])
    """pipelines/eval.py: what to compare, in order (the first is the baseline). `base` is model.path (or the tiny
    preset) alone; `NAME=PATH` is a PEFT adapter folder on that base, or a full model folder of its own."""
    max_new_tokens: int = 32
    """Longest generated answer during evaluation (a suite card may set its own)."""
    limit: int = 0
    """Rows per suite (0 = every row): a quick look on big suites."""
    judge: Literal["model", "reward_model", "none"] = "model"
    """Win-rate judge: a causal LM asked which answer is better (next-token '1' vs '2'), a reward model from
    the rm stage (higher score wins), or none (win-rate suites are skipped)."""
    judge_path: str = ""
    """The judge's model folder. Empty with judge=model: the evaluated base model without adapter."""
    swap_positions: bool = True
    """Judge every pair in both orders and average (removes the judge's first-position bias)."""
    perplexity_batch_size: int = 8
    """Rows per forward pass when scoring held-out text."""
    max_lora_rank: int = 16
    """Largest adapter rank the evaluation engine accepts."""
    keep_samples: int = 3
    """Example answers per suite kept in the report (to read what the numbers mean)."""
    seed: int = 0
    """Sampling seed (pass@k)."""

    def __post_init__(self):
        check(self.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
        check(self.limit >= 0, "eval.limit", "must be >= 0 (0 = all rows)")
        check(bool(self.checkpoints), "eval.checkpoints", "name at least one checkpoint, e.g. [base, sft=runs/sft/adapter]")
        check(self.judge != "reward_model" or bool(self.judge_path), "eval.judge_path",
              "judge=reward_model needs the reward model's folder (e.g. runs/rm/model)")
        check(self.perplexity_batch_size >= 1, "eval.perplexity_batch_size", "must be >= 1")
