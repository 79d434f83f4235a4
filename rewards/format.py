"""Format reward: does the completion follow a required layout (e.g. ``<think>..</think><answer>..</answer>``)?"""
from __future__ import annotations

from dataclasses import dataclass

import regex

from rewards.base import ERROR, OK, TIMEOUT, Item, Result

# DeepSeek-R1-style layout (Guo et al., 2025, "DeepSeek-R1"): one reasoning block, then one answer block.
# The tempered dots (no closing tag inside a block) leave one way to split the text, so matching is linear;
# a lazy ".*?" here took seconds on a hostile 80 kB completion.
THINK_ANSWER = r"\s*<think>(?:(?!</think>).)*</think>\s*<answer>(?:(?!</answer>).)*</answer>\s*"


@dataclass
class FormatScorer:
    """1.0 if the whole completion matches ``pattern`` (a regular expression, DOTALL), else 0.0.

    Options: ``pattern`` (default: one think block then one answer block), ``max_chars`` (longer completions
    score 0 unmatched), ``time_limit_s`` (per item, for operator patterns that backtrack; status timeout).
    """

    pattern: str = THINK_ANSWER
    max_chars: int = 100_000
    time_limit_s: float = 1.0
    name: str = "format"

    def __post_init__(self):
        try:
            self._re = regex.compile(self.pattern, regex.DOTALL)
        except regex.error as e:
            raise ValueError(f"format option pattern={self.pattern!r} is not a valid regular expression: {e}") from None

    def _one(self, completion) -> Result:
        if not isinstance(completion, str):
            return Result(None, ERROR, {"reason": "completion is not a string"})
        if len(completion) > self.max_chars:
            return Result(0.0, OK, {"matched": False, "reason": f"longer than max_chars={self.max_chars}"})
        try:
            ok = self._re.fullmatch(completion, timeout=self.time_limit_s, concurrent=True) is not None
        except TimeoutError:
            return Result(None, TIMEOUT, {"reason": f"pattern took over {self.time_limit_s:g} s"})
        return Result(1.0 if ok else 0.0, OK, {"matched": ok})

    def score(self, items: list[Item]) -> list[Result]:
        return [self._one(it.completion) for it in items]
