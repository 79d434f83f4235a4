"""Format reward: does the completion follow a required layout (e.g. ``<think>..</think><answer>..</answer>``)?"""
from __future__ import annotations

import re
from dataclasses import dataclass

from rewards.base import ERROR, OK, Item, Result

# DeepSeek-R1-style layout (Guo et al., 2025, "DeepSeek-R1"): reasoning in think tags, then the answer.
THINK_ANSWER = r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$"


@dataclass
class FormatScorer:
    """1.0 if the completion matches ``pattern`` (a regular expression, full match, DOTALL), else 0.0.

    Options: ``pattern`` (default: think-then-answer tags), ``max_chars`` (longer completions score 0
    without running the regex, which bounds its time on hostile input).
    """

    pattern: str = THINK_ANSWER
    max_chars: int = 100_000
    name: str = "format"

    def __post_init__(self):
        try:
            self._re = re.compile(self.pattern, re.DOTALL)
        except re.error as e:
            raise ValueError(f"format option pattern={self.pattern!r} is not a valid regular expression: {e}") from None

    def score(self, items: list[Item]) -> list[Result]:
        out = []
        for it in items:
            if not isinstance(it.completion, str):
                out.append(Result(None, ERROR, {"reason": "completion is not a string"}))
            elif len(it.completion) > self.max_chars:
                out.append(Result(0.0, OK, {"matched": False, "reason": f"longer than max_chars={self.max_chars}"}))
            else:
                ok = self._re.fullmatch(it.completion) is not None
                out.append(Result(1.0 if ok else 0.0, OK, {"matched": ok}))
        return out
