"""Tool calls in an assistant turn, in the Qwen3 / Hermes format (pure functions).

The format: each call is a block

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "37*48"}}
    </tool_call>

anywhere in the assistant text, several per turn allowed. The JSON inside is one object with a non-empty string
``name`` and ``arguments``, an object or a JSON string holding an object (a missing ``arguments`` is ``{}``).
Whitespace around the JSON is optional, so the compact ``<tool_call>{"name":"calculator",...}</tool_call>`` is the
same call (Qwen3's and vLLM's Hermes parsers read it too: they ``json.loads`` what lies between the tags).

A block that does not parse is still a call, a malformed one (:attr:`ToolCall.error` says why): bad JSON, not an
object, no name, arguments not an object, or an opening ``<tool_call>`` never closed (it takes the rest of the text).
A stray ``</tool_call>`` with no opening tag is plain text.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass
class ToolCall:
    """One ``<tool_call>`` block: ``name`` and ``arguments`` when it parsed, else ``error`` says why it did not."""

    name: str | None
    arguments: dict | None
    error: str | None
    raw: str
    """The text between the tags (or after an unclosed opening tag)."""


def _blocks(text: str):
    """(start, end, inner, closed) of each block, in order."""
    pos = 0
    while (start := text.find(OPEN, pos)) != -1:
        inner_start = start + len(OPEN)
        close = text.find(CLOSE, inner_start)
        if close == -1:
            yield start, len(text), text[inner_start:], False
            return
        yield start, close + len(CLOSE), text[inner_start:close], True
        pos = close + len(CLOSE)


def _parse_one(inner: str, closed: bool) -> ToolCall:
    if not closed:
        return ToolCall(None, None, f"unclosed {OPEN} (no {CLOSE} after it)", inner)
    try:
        obj = json.loads(inner)
    except (ValueError, RecursionError) as e:
        return ToolCall(None, None, f"the call is not valid JSON ({str(e)[:80]})", inner)
    if not isinstance(obj, dict):
        return ToolCall(None, None, f"the call must be a JSON object, got {type(obj).__name__}", inner)
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return ToolCall(None, None, 'the call has no "name" string', inner)
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return ToolCall(name, None, '"arguments" is a string that is not JSON', inner)
    if not isinstance(args, dict):
        return ToolCall(name, None, f'"arguments" must be an object, got {type(args).__name__}', inner)
    return ToolCall(name, args, None, inner)


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every ``<tool_call>`` block of ``text``, in order, each parsed or marked malformed (see module docstring)."""
    return [_parse_one(inner, closed) for _, _, inner, closed in _blocks(text)]


def strip_tool_calls(text: str) -> str:
    """``text`` without its ``<tool_call>`` blocks (an unclosed one takes the rest), outer whitespace trimmed."""
    out, pos = [], 0
    for start, end, _, _ in _blocks(text):
        out.append(text[pos:start])
        pos = end
    out.append(text[pos:])
    return "".join(out).strip()


def format_tool_call(name: str, arguments: dict) -> str:
    """One call as the parser reads it and Qwen3 writes it, with compact JSON (fewer tokens for tiny tokenizers):
    ``<tool_call>\\n{"name":"calculator","arguments":{"expression":"37*48"}}\\n</tool_call>``."""
    body = json.dumps({"name": name, "arguments": arguments}, separators=(",", ":"), ensure_ascii=False)
    return f"{OPEN}\n{body}\n{CLOSE}"
