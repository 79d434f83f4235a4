"""The built-in environments: a task's prompt, the tools on offer, tool calls run turn by turn.

``calculator`` offers the calculator tool, ``python`` the sandboxed python tool; ``env.tools`` overrides the set
offered (names from :data:`envs.tools.TOOLS`), ``["none"]`` offers none (then any call is an ``unknown_tool``
error). The final answer is scored by the run's scorers (e.g. ``exact_answer`` on ``{"answer": N}``).
"""
from __future__ import annotations

from config.envs import EnvConfig
from config.loader import ConfigError
from envs.base import Environment, StepResult
from envs.tool_calls import parse_tool_calls, strip_tool_calls
from envs.tools import TOOLS, Tool, call_tool


def cut(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters plus a note saying how long it was."""
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"... [cut: {len(text)} characters, first {max_chars} shown]"


def offered_tools(cfg: EnvConfig, default: list[str]) -> list[Tool]:
    """The tools a run offers: ``cfg.tools`` if set (``["none"]``: none), else ``default``; ConfigError for an
    unknown name."""
    names = cfg.tools or default
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise ConfigError(f"env.tools: unknown tool(s) {unknown}; known: {sorted(TOOLS)}, or ['none'] for no tools")
    return [TOOLS[n] for n in names]


class ToolEnv(Environment):
    """One trajectory over chat messages with tools (see :class:`envs.base.Environment`).

    Each assistant turn's ``<tool_call>`` blocks (envs/tool_calls.py) run in order, each within
    ``env.tool_timeout_s``; each gives one tool message, its result (cut to ``env.max_result_chars``) or
    ``"error: ..."``. A turn without calls ends the trajectory; so does turn ``env.max_turns``, whose calls are then
    not run (``info["not_run"]``).
    """

    def __init__(self, cfg: EnvConfig, tools: list[Tool]):
        self.cfg = cfg
        self._tools = {t.name: t for t in tools}
        self.tools = [t.schema() for t in tools]
        self.turns = 0
        self.done = False
        self._last = ""

    def reset(self, row: dict) -> list[dict]:
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not (isinstance(prompt, list) and prompt and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in prompt)):
            raise ValueError('an env row needs "prompt": a string or a non-empty list of {"role", "content"} '
                             f"chat messages, got {str(prompt)[:120]!r}")
        self.turns, self.done, self._last = 0, False, ""
        return [dict(m) for m in prompt]

    def step(self, assistant_text: str) -> StepResult:
        if self.done:
            raise RuntimeError("step() after the trajectory ended; make a fresh env with envs.registry.make_env")
        self.turns += 1
        self._last = strip_tool_calls(assistant_text)
        calls = parse_tool_calls(assistant_text)
        info = {"turn": self.turns, "tool_calls": len(calls), "valid_calls": 0, "tool_errors": 0, "errors": [],
                "not_run": 0}
        if not calls or self.turns >= self.cfg.max_turns:
            self.done = True
            info["not_run"] = len(calls)
            return StepResult([], 0.0, True, info)
        messages = []
        for call in calls:
            content, kind = self._run(call)
            if kind is None:
                info["valid_calls"] += 1
            else:
                info["tool_errors"] += 1
                info["errors"].append(kind)
            messages.append({"role": "tool", "name": (call.name or "")[:64],
                             "content": cut(content, self.cfg.max_result_chars)})
        shaping = self.cfg.shaping
        reward = info["valid_calls"] * shaping.get("valid_call", 0.0) + info["tool_errors"] * shaping.get("tool_error", 0.0)
        return StepResult(messages, float(reward), False, info)

    def _run(self, call) -> tuple[str, str | None]:
        if call.error is not None:
            return f"error: malformed tool call: {call.error}", "malformed"
        tool = self._tools.get(call.name)
        if tool is None:
            offered = sorted(self._tools) or "none (answer without tools)"
            return f"error: unknown tool {call.name[:60]!r}; tools offered: {offered}", "unknown_tool"
        return call_tool(tool, call.arguments, self.cfg.tool_timeout_s)

    def final_answer(self) -> str:
        return self._last


def calculator_env(cfg: EnvConfig) -> ToolEnv:
    return ToolEnv(cfg, offered_tools(cfg, ["calculator"]))


def python_env(cfg: EnvConfig) -> ToolEnv:
    return ToolEnv(cfg, offered_tools(cfg, ["python"]))
