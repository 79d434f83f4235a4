"""Exact-answer reward: pull the final answer out of a completion and compare it with the reference.

Extraction, first that applies: a JSON object with an ``answer`` key (the whole completion, or the
last such object in it); the last ``\\boxed{...}``; the last ``answer: X`` / ``answer is X``; the last
number in the text. Comparison: numerically within a tolerance when both sides read as numbers
(``7``, ``7.0``, ``1,000``, ``3/4``), else as normalised strings. A reference may be a list of
acceptable answers.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from rewards.base import ERROR, OK, Item, Result

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?")
_FULL_NUMBER = re.compile(rf"^\s*(?:{_NUMBER.pattern})\s*$")
_FRACTION = re.compile(r"^\s*([-+]?\d+)\s*/\s*(\d+)\s*$")
_TEX_FRACTION = re.compile(r"^([-+]?)\\[dt]?frac\{\s*([-+]?\d+)\s*\}\{\s*(\d+)\s*\}$")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*([^\n]+)", re.IGNORECASE)
_MAX_SCAN = 100_000  # characters of a completion looked at; answers live near the end
_OBJECT_START = re.compile(r'\{\s*"')  # where a JSON object with a key may begin
_MAX_OBJECTS, _MAX_OBJECT_CHARS = 64, 10_000


def to_number(value: Any) -> float | None:
    """``7``, ``"7.0"``, ``"1,000"``, ``"3/4"``, ``"$5$"`` -> float; anything else -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str) or len(value) > 100:
        return None
    s = value.strip().strip("$").strip().rstrip(".").replace("\\!", "")
    if s.endswith("%"):
        s = s[:-1]
    m = _TEX_FRACTION.match(s)
    if m:
        s = f"{m.group(1)}{m.group(2)}/{m.group(3)}".replace("--", "").replace("-+", "-").replace("+-", "-")
    m = _FRACTION.match(s)
    if m:
        den = int(m.group(2))
        return float(Fraction(int(m.group(1)), den)) if den else None
    if _FULL_NUMBER.match(s):
        x = float(s.replace(",", ""))
        return x if math.isfinite(x) else None
    return None


def normalise(value: Any) -> str:
    """Case-, space- and wrapper-insensitive string form used when either side is not a number."""
    if isinstance(value, bool):
        value = "true" if value else "false"
    s = str(value).strip()
    s = re.sub(r"^\\text\{(.*)\}$", r"\1", s.strip("$").strip())
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip().lower()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        s = s[1:-1].strip()
    return s


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None  # unbalanced: no answer rather than a guess


def _json_answer(text: str, key: str) -> tuple[bool, Any]:
    """The ``key`` field of the whole text as a JSON object, else of the last JSON object in it that has one.

    Only the last ``_MAX_OBJECTS`` object starts are tried, each on a bounded slice: trying every ``{`` of a
    hostile completion would be quadratic (each failed decode also scans back to count lines).
    """
    stripped = text.strip()
    try:
        obj = json.loads(stripped)
        if isinstance(obj, dict) and key in obj:
            return True, obj[key]
    except (ValueError, RecursionError):
        pass
    decoder = json.JSONDecoder()
    starts = [m.start() for m in _OBJECT_START.finditer(text)][-_MAX_OBJECTS:]
    for pos in reversed(starts):
        try:
            obj, _ = decoder.raw_decode(text[pos:pos + _MAX_OBJECT_CHARS])
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict) and key in obj:
            return True, obj[key]
    return False, None


def extract_answer(text: str, key: str = "answer") -> tuple[Any, str]:
    """The final answer in ``text`` and how it was found; ``(None, reason)`` if there is none."""
    text = text[-_MAX_SCAN:]
    found, value = _json_answer(text, key)
    if found:
        return value, "json"
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed, "boxed"
    matches = _ANSWER_IS.findall(text)
    if matches:
        candidate = matches[-1].strip().rstrip(".").strip()
        lead = _NUMBER.match(candidate.lstrip("$ "))
        # "answer: 12 apples" -> 12, "answer: 3/4" -> 3/4, "answer: Paris" -> Paris
        if to_number(candidate) is None and lead:
            return lead.group(0), "answer_is"
        return candidate, "answer_is"
    nums = _NUMBER.findall(text)
    if nums:
        return nums[-1], "last_number"
    return None, "no answer found (no JSON answer, \\boxed{}, 'answer: X' or number)"


def answers_match(answer: Any, reference: Any, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """Numeric equality within ``max(abs_tol, rel_tol*|ref|)`` when both are numbers, else normalised strings."""
    a, r = to_number(answer), to_number(reference)
    if a is not None and r is not None:
        return abs(a - r) <= max(abs_tol, rel_tol * abs(r))
    if isinstance(answer, (dict, list)) or isinstance(reference, (dict, list)):
        return answer == reference
    return normalise(answer) == normalise(reference)


@dataclass
class ExactAnswerScorer:
    """1.0 if the extracted answer equals the reference (or one of a list of them), else 0.0.

    Options: ``key`` (the JSON field holding the answer), ``rel_tol`` / ``abs_tol`` (numeric tolerance).
    A missing answer is a verdict (0.0, status ok, ``details['reason']``); a missing reference is an error.
    """

    key: str = "answer"
    rel_tol: float = 1e-6
    abs_tol: float = 1e-9
    name: str = "exact_answer"

    def score(self, items: list[Item]) -> list[Result]:
        return [self._one(it) for it in items]

    def _one(self, item: Item) -> Result:
        if item.reference is None:
            return Result(None, ERROR, {"reason": "item has no reference answer"})
        if not isinstance(item.completion, str):
            return Result(None, ERROR, {"reason": "completion is not a string"})
        answer, how = extract_answer(item.completion, self.key)
        if answer is None and how != "json":
            return Result(0.0, OK, {"reason": how})
        refs = item.reference if isinstance(item.reference, list) else [item.reference]
        ok = any(answers_match(answer, r, self.rel_tol, self.abs_tol) for r in refs)
        # details travel as JSON: no NaN/Infinity, no unbounded strings
        shown = answer if isinstance(answer, (int, bool)) or answer is None else str(answer)[:200]
        if isinstance(answer, float):
            shown = answer if math.isfinite(answer) else str(answer)
        return Result(1.0 if ok else 0.0, OK, {"answer": shown, "extracted_by": how})
