"""The environment interface of a multi-turn, tool-using trajectory (plain Python: no Ray, no torch)."""
from __future__ import annotations

from dataclasses import dataclass, field

ERROR_KINDS = ("malformed", "unknown_tool", "bad_arguments", "raised", "timeout")
"""Why a tool call failed: its block did not parse, it named a tool not offered, its arguments broke the tool's
JSON schema, the tool raised, the tool did not return within ``env.tool_timeout_s``."""


@dataclass
class StepResult:
    """What one assistant turn led to."""

    messages: list[dict]
    """Messages to append after the assistant turn: ``{"role": "tool", "name": ..., "content": str}``, one per
    call, in call order (a failed call's content starts with ``"error: "``); [] when ``done``."""
    reward: float
    """This turn's shaping reward: ``env.shaping["valid_call"]`` per call that ran, ``["tool_error"]`` per failed call."""
    done: bool
    """The trajectory ends: the turn made no tool call (it is the final answer) or reached ``env.max_turns``."""
    info: dict = field(default_factory=dict)
    """``{"turn": n, "tool_calls": int, "valid_calls": int, "tool_errors": int, "errors": [kind, ...],
    "not_run": int}``; ``not_run`` counts calls dropped because the turn reached ``env.max_turns``."""


class Environment:
    """One trajectory (it holds the turn count): build a fresh one per trajectory with ``envs.registry.make_env``.

    ``tools`` are the OpenAI-style function definitions offered to the model
    (``{"type": "function", "function": {"name", "description", "parameters": JSON schema}}``), to be passed to
    ``tokenizer.apply_chat_template(messages, tools=env.tools)``.
    """

    tools: list[dict] = []

    def reset(self, row: dict) -> list[dict]:
        """The first messages of the trajectory, from the row's ``"prompt"`` chat messages."""
        raise NotImplementedError

    def step(self, assistant_text: str) -> StepResult:
        """Take one sampled assistant turn (its raw text, end-of-turn token excluded) and run its tool calls."""
        raise NotImplementedError

    def final_answer(self) -> str:
        """The text the outcome reward scores: the last assistant turn's text without its tool calls."""
        raise NotImplementedError
