"""Scorers by name: the built-ins, plus in-process plugins that the operator has enabled.

Plugins are Python entry points in the group ``raypost.rewards`` (``name = "package.module:factory"``,
the factory takes the scorer's options as keyword arguments and returns a :class:`rewards.base.Scorer`).
An installed plugin is loaded only once the operator names it (``enable_plugins`` /
``RAYPOST_REWARD_PLUGINS=a,b``): installing a package must not be enough to run its code in the
trainer. Names in a request are looked up here and never imported, executed or fetched.
"""
from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from rewards.base import Scorer

ENTRY_POINT_GROUP = "raypost.rewards"
PLUGINS_ENV = "RAYPOST_REWARD_PLUGINS"

# Imported on first use so that e.g. the JSON scorers do not pull in torch.
BUILTINS = {
    "json_valid": "rewards.json_valid:JsonValidScorer",
    "json_schema": "rewards.json_schema:JsonSchemaScorer",
    "exact_answer": "rewards.answer:ExactAnswerScorer",
    "format": "rewards.format:FormatScorer",
    "overlong": "rewards.length:OverlongScorer",
    "length": "rewards.length:LengthScorer",
    "reward_model": "rewards.reward_model:RewardModelScorer",
    "python_unit_tests": "rewards.unit_tests:PythonUnitTestScorer",
    "remote": "rewards.remote:RemoteScorer",
    "weighted": "rewards.compose:WeightedScorer",
}

_enabled: set[str] = {p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(",") if p.strip()}


def enable_plugins(names) -> None:
    """Enable these installed entry-point plugins in this process (the operator's choice, from config)."""
    _enabled.update(n.strip() for n in names if n and n.strip())


def enabled_plugins() -> list[str]:
    return sorted(_enabled)


def installed_plugins() -> dict[str, str]:
    """Entry-point name -> ``module:attr`` of every plugin installed in the group (loaded or not)."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_scorers() -> list[str]:
    return sorted(BUILTINS) + sorted(n for n in _enabled if n not in BUILTINS)


def _load(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def make_scorer(name: str, **options) -> Scorer:
    """Build the scorer called ``name`` with ``options``.

    Raises ``ValueError`` naming the known scorers when ``name`` is unknown or is an installed plugin
    that is not enabled, and when the options do not fit the scorer.
    """
    if not isinstance(name, str):
        raise ValueError(f"scorer name must be a string, got {type(name).__name__}")
    if name in BUILTINS:
        factory = _load(BUILTINS[name])
    elif name in _enabled:
        eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not eps:
            raise ValueError(f"reward plugin {name!r} is enabled but no installed package provides it in entry-point "
                             f"group {ENTRY_POINT_GROUP!r}; installed: {sorted(installed_plugins())}")
        factory = eps[0].load()
    else:
        hint = ""
        if name in installed_plugins():
            hint = (f"; {name!r} is an installed plugin but not enabled: add it to the operator's plugin list "
                    f"({PLUGINS_ENV} or the service's plugins setting)")
        raise ValueError(f"unknown scorer {name[:100]!r}; known: {known_scorers()}{hint}")
    try:
        scorer = factory(**options)
    except TypeError as e:
        raise ValueError(f"bad options for scorer {name!r}: {e}") from None
    if not hasattr(scorer, "score"):
        raise ValueError(f"scorer {name!r} ({factory!r}) built an object without a score() method")
    if getattr(scorer, "name", None) != name:
        try:
            scorer.name = name
        except AttributeError:
            pass
    return scorer
