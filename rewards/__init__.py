"""Reward scoring: scorers with one interface, their weighted composition, the REST service and its client.

    from rewards import Item, make_scorer, WeightedScorer
    WeightedScorer({"json_valid": 0.2, "exact_answer": 1.0}).score([Item("1+6=?", '{"answer": 7}', 7)])
"""
from rewards.base import Item, Result, Scorer  # noqa: F401
from rewards.compose import WeightedScorer  # noqa: F401
from rewards.registry import enable_plugins, make_scorer  # noqa: F401
