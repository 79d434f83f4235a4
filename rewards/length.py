"""Length rewards: a target band, and DAPO's soft overlong punishment.

Both are functions of one integer per item, so they are plain float functions rather than torch ones:
the reward service stays importable without torch. Lengths are counted in ``chars``, ``words`` or
``tokens`` (the latter with a local tokenizer folder, loaded once).
"""
from __future__ import annotations

from dataclasses import dataclass

from rewards.base import ERROR, OK, Item, Result

UNITS = ("chars", "words", "tokens")


def overlong_penalty(length: int, max_len: int, cache_len: int) -> float:
    """DAPO's soft overlong punishment (Yu et al., 2025, "DAPO", eq. 13), with L_max = ``max_len``,
    L_cache = ``cache_len`` and |y| = ``length``::

        R_length(y) = 0                                  if |y| <= L_max - L_cache
                      ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
                      -1                                 if L_max < |y|
    """
    free = max_len - cache_len
    if length <= free:
        return 0.0
    if length <= max_len:
        return (free - length) / cache_len
    return -1.0


def length_band(length: int, min_len: int, max_len: int, slack: int) -> float:
    """1 inside [min_len, max_len], falling linearly to 0 over ``slack`` units outside it::

        r(L) = max(0, 1 - d(L) / slack),  d(L) = max(min_len - L, L - max_len, 0)

    (``slack`` = 0 makes it a hard 0/1 band.)
    """
    d = max(min_len - length, length - max_len, 0)
    if d == 0:
        return 1.0
    return 0.0 if slack <= 0 else max(0.0, 1.0 - d / slack)


class _Counter:
    def __init__(self, unit: str, tokenizer: str):
        if unit not in UNITS:
            raise ValueError(f"length unit {unit!r}: use one of {UNITS}")
        if unit == "tokens" and not tokenizer:
            raise ValueError("length unit 'tokens' needs option tokenizer=<local tokenizer or model folder>")
        self.unit, self._tok = unit, None
        if unit == "tokens":
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(tokenizer)

    def __call__(self, text: str) -> int:
        if self.unit == "chars":
            return len(text)
        if self.unit == "words":
            return len(text.split())
        return len(self._tok(text, add_special_tokens=False)["input_ids"])


def _lengths(counter: _Counter, items: list[Item]) -> list[int | None]:
    return [counter(it.completion) if isinstance(it.completion, str) else None for it in items]


@dataclass
class OverlongScorer:
    """DAPO overlong shaping: 0 for short enough completions, down to -1 past ``max_len`` (see
    :func:`overlong_penalty`). Options: ``max_len``, ``cache_len``, ``unit``, ``tokenizer``."""

    max_len: int = 1024
    cache_len: int = 256
    unit: str = "chars"
    tokenizer: str = ""
    name: str = "overlong"

    def __post_init__(self):
        if not 0 < self.cache_len <= self.max_len:
            raise ValueError(f"overlong options need 0 < cache_len <= max_len, got cache_len={self.cache_len}, "
                             f"max_len={self.max_len}")
        self._count = _Counter(self.unit, self.tokenizer)

    def score(self, items: list[Item]) -> list[Result]:
        return [Result(None, ERROR, {"reason": "completion is not a string"}) if n is None else
                Result(overlong_penalty(n, self.max_len, self.cache_len), OK, {"length": n, "unit": self.unit})
                for n in _lengths(self._count, items)]


@dataclass
class LengthScorer:
    """1 inside a length band, falling to 0 over ``slack`` outside it (see :func:`length_band`).
    Options: ``min_len``, ``max_len``, ``slack``, ``unit``, ``tokenizer``."""

    min_len: int = 0
    max_len: int = 1024
    slack: int = 0
    unit: str = "chars"
    tokenizer: str = ""
    name: str = "length"

    def __post_init__(self):
        if not 0 <= self.min_len <= self.max_len or self.slack < 0:
            raise ValueError(f"length options need 0 <= min_len <= max_len and slack >= 0, got min_len="
                             f"{self.min_len}, max_len={self.max_len}, slack={self.slack}")
        self._count = _Counter(self.unit, self.tokenizer)

    def score(self, items: list[Item]) -> list[Result]:
        return [Result(None, ERROR, {"reason": "completion is not a string"}) if n is None else
                Result(length_band(n, self.min_len, self.max_len, self.slack), OK, {"length": n, "unit": self.unit})
                for n in _lengths(self._count, items)]
