"""The one interface every scorer speaks: a batch of items in, one result per item out.

A scorer never raises for a bad item: whatever the completion (or the reference) holds, the item gets
a :class:`Result` whose ``status`` says what happened and whose ``details`` say why. ``score`` is
``None`` only when the scorer could not judge the item (an error on the scorer's side, a deadline,
a sandbox that could not be built); a verdict on the completion -- even "this is garbage" -- is a number.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

# Statuses of most scorers.
OK, ERROR, TIMEOUT = "ok", "error", "timeout"
# Statuses of the unit-test scorer: verdicts on the program (pass/fail/timeout/runtime_error) kept
# apart from the sandbox's own failure (infra_error), which is never the completion's fault.
PASS, FAIL, RUNTIME_ERROR, INFRA_ERROR = "pass", "fail", "runtime_error", "infra_error"
STATUSES = frozenset({OK, ERROR, TIMEOUT, PASS, FAIL, RUNTIME_ERROR, INFRA_ERROR})


@dataclass
class Item:
    """One thing to score: the prompt, the model's completion, and what it is judged against."""

    prompt: str
    completion: str
    reference: Any = None


@dataclass
class Result:
    """A scorer's verdict on one item."""

    score: float | None
    status: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Scorer(Protocol):
    name: str

    def score(self, items: list[Item]) -> list[Result]:
        """One result per item, in order; never raises for a bad item."""
        ...


def failed(result: Result) -> bool:
    """True when the scorer could not judge the item (as opposed to judging it bad)."""
    return result.score is None
