"""Strict JSON validity: 1.0 if the completion is one JSON text (RFC 8259), else 0.0.

Python's ``json`` is lenient in two ways that matter for rewards: it accepts ``NaN``/``Infinity``
(not JSON) and silently keeps the last of duplicate keys. Both are verdicts here, chosen by option,
never crashes. Size and nesting depth are bounded before and after parsing.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from rewards.base import ERROR, OK, Item, Result

_FENCE = re.compile(r"```[ \t]*json[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)


class JsonRejected(ValueError):
    """The text is not acceptable JSON; the message says why (it goes into ``details['reason']``)."""


def _reject_constant(name: str):
    raise JsonRejected(f"{name} is not JSON (allow_nan=false)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise JsonRejected(f"duplicate key {k[:80]!r} (allow_duplicate_keys=false)")
        out[k] = v
    return out


def _long_int(text: str) -> int | float:
    # CPython refuses int() of more than 4300 digits; such a number is still valid JSON.
    return int(text) if len(text) <= 4000 else float(text)


def _depth(value: Any) -> int:
    depth, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in node)
    return depth


def extract_fenced(text: str) -> str:
    """The body of the first ```json fenced block of ``text``, or ``text`` itself if there is none."""
    m = _FENCE.search(text)
    return m.group(1) if m else text


def parse_strict(text: str, allow_nan: bool = False, allow_duplicate_keys: bool = False,
                 max_chars: int = 1_000_000, max_depth: int = 64) -> Any:
    """Parse ``text`` as strict JSON or raise :class:`JsonRejected` with the reason."""
    if len(text) > max_chars:
        raise JsonRejected(f"text of {len(text)} characters is longer than max_chars={max_chars}")
    kwargs: dict[str, Any] = {}
    if not allow_nan:
        kwargs["parse_constant"] = _reject_constant
    if not allow_duplicate_keys:
        kwargs["object_pairs_hook"] = _no_duplicates
    try:
        try:
            value = json.loads(text, **kwargs)
        except ValueError as e:
            if "integer string conversion" not in str(e):
                raise
            value = json.loads(text, parse_int=_long_int, **kwargs)
    except JsonRejected:
        raise
    except json.JSONDecodeError as e:
        raise JsonRejected(f"{e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise JsonRejected(f"nesting deeper than max_depth={max_depth}") from None
    except ValueError as e:
        raise JsonRejected(str(e)[:200]) from None
    # Counting brackets is a cheap upper bound on depth: only walk the value when it could be too deep.
    if text.count("[") + text.count("{") > max_depth and _depth(value) > max_depth:
        raise JsonRejected(f"nesting deeper than max_depth={max_depth}")
    return value


_TYPES = {"any": object, "object": dict, "array": list}


@dataclass
class JsonValidScorer:
    """1.0 if the completion parses as strict JSON, else 0.0 with ``details['reason']``.

    Options: ``fenced`` (score the first ```json block when the completion has one),
    ``allow_nan`` / ``allow_duplicate_keys`` (the verdict on those two non-strict inputs),
    ``require`` ("any" | "object" | "array": the top-level type that counts), ``max_chars``, ``max_depth``.
    """

    fenced: bool = False
    allow_nan: bool = False
    allow_duplicate_keys: bool = False
    require: str = "any"
    max_chars: int = 1_000_000
    max_depth: int = 64
    name: str = "json_valid"

    def __post_init__(self):
        if self.require not in _TYPES:
            raise ValueError(f"json_valid option require={self.require!r}: use one of {sorted(_TYPES)}")

    def score(self, items: list[Item]) -> list[Result]:
        return [self._one(it) for it in items]

    def _one(self, item: Item) -> Result:
        if not isinstance(item.completion, str):
            return Result(None, ERROR, {"reason": f"completion is {type(item.completion).__name__}, not a string"})
        text = extract_fenced(item.completion) if self.fenced else item.completion
        try:
            value = parse_strict(text, self.allow_nan, self.allow_duplicate_keys, self.max_chars, self.max_depth)
        except JsonRejected as e:
            return Result(0.0, OK, {"valid": False, "reason": str(e)})
        if not isinstance(value, _TYPES[self.require]):
            return Result(0.0, OK, {"valid": False, "reason": f"top-level value is {type(value).__name__}, "
                                                              f"require={self.require}"})
        return Result(1.0, OK, {"valid": True})
