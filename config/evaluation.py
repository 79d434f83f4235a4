"""Evaluation-panel options (see evalpanel/ and pipelines/eval.py)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    max_new_tokens: int = 32
    """Longest generated answer during evaluation."""
