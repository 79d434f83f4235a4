"""Normalise the dataset formats people have to OpenAI-style ``{"messages": [{"role", "content"}, ...]}``.

Recognised, in this order of precedence:
- OpenAI / TRL conversational: ``messages`` (content may also be a list of ``{"type": "text", "text"}`` parts);
- ShareGPT: ``conversations`` of ``{"from": "human"|"gpt"|"system", "value"}``;
- Alpaca: ``instruction``, optional ``input``, ``output`` (optional ``system``);
- TRL prompt-completion: ``prompt`` and ``completion``, each a string or a list of messages.

Shape problems (no known format, a message that is not an object, a missing role) raise
:class:`datapipe.RowError`; content problems (empty turns, unknown roles, bad encodings) are left to
``datapipe.clean.clean_rows``, which counts them.
"""
from __future__ import annotations

from typing import Any

from datapipe.rows import Row, RowError, origin_of

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                  "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system"}
FORMATS = "messages (OpenAI), conversations (ShareGPT), instruction/input/output (Alpaca) or prompt/completion"


def normalize_row(row: dict, origin: str | None = None) -> Row:
    """``row`` in any recognised format -> ``Row({"messages": [...]})`` with the same origin.

    Raises :class:`RowError` naming the file and row (from the row's origin, or ``origin``) and the problem.
    """
    where = origin or origin_of(row)
    if not isinstance(row, dict):
        raise RowError(where, f"expected an object with {FORMATS}, got {type(row).__name__}")
    if "messages" in row:
        msgs = _openai_messages(row["messages"], "messages", where)
    elif "conversations" in row:
        msgs = _sharegpt(row["conversations"], where)
    elif "instruction" in row and "output" in row:
        msgs = _alpaca(row, where)
    elif "prompt" in row and "completion" in row:
        msgs = _side(row["prompt"], "user", "prompt", where) + _side(row["completion"], "assistant", "completion", where)
    elif "prompt" in row and "chosen" in row and "rejected" in row:
        raise RowError(where, "this is a preference row (prompt/chosen/rejected); use it in the DPO or reward-model "
                              f"stage, or give SFT rows with {FORMATS}")
    else:
        raise RowError(where, f"no recognised format: found keys {sorted(row)}; expected {FORMATS}")
    out = {"messages": msgs}
    return row.derive(out) if isinstance(row, Row) and origin is None else Row(out, where)


def _content(value: Any, what: str, where: str) -> Any:
    """Text parts are joined; other part types (images, audio) cannot train a text model."""
    if value is None:
        return ""
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RowError(where, f"{what} content part {j} is of type {kind!r}; only text parts are supported")
        return "".join(texts)
    return value  # strings pass; other types are counted as broken turns by clean_rows


def _openai_messages(msgs: Any, field: str, where: str) -> list[dict]:
    if not isinstance(msgs, list):
        raise RowError(where, f"'{field}' must be a list of {{role, content}} objects, got {type(msgs).__name__}")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise RowError(where, f"{field}[{i}] must be an object with 'role' and 'content', got {type(m).__name__}")
        if "role" not in m:
            raise RowError(where, f"{field}[{i}] has no 'role' (keys: {sorted(m)})")
        out.append({"role": m["role"], "content": _content(m.get("content"), f"{field}[{i}]", where)})
    return out


def _sharegpt(conv: Any, where: str) -> list[dict]:
    if not isinstance(conv, list):
        raise RowError(where, f"'conversations' must be a list of {{from, value}} objects, got {type(conv).__name__}")
    out = []
    for i, m in enumerate(conv):
        if not isinstance(m, dict):
            raise RowError(where, f"conversations[{i}] must be an object with 'from' and 'value', got {type(m).__name__}")
        role = m.get("from", m.get("role"))
        if role is None:
            raise RowError(where, f"conversations[{i}] has no 'from' (keys: {sorted(m)})")
        # Unknown speakers keep their name so that clean_rows can count them as unknown roles.
        role = SHAREGPT_ROLES.get(str(role).lower(), role)
        out.append({"role": role, "content": _content(m.get("value", m.get("content")), f"conversations[{i}]", where)})
    return out


def _alpaca(row: dict, where: str) -> list[dict]:
    for key in ("instruction", "output"):
        if not isinstance(row[key], str):
            raise RowError(where, f"Alpaca field '{key}' must be a string, got {type(row[key]).__name__}")
    inp = row.get("input") or ""
    if not isinstance(inp, str):
        raise RowError(where, f"Alpaca field 'input' must be a string, got {type(inp).__name__}")
    user = row["instruction"] if not inp.strip() else f"{row['instruction']}\n\n{inp}"
    msgs = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


def _side(value: Any, role: str, field: str, where: str) -> list[dict]:
    if isinstance(value, list):
        return _openai_messages(value, field, where)
    return [{"role": role, "content": _content(value, field, where)}]


def normalize_rows(rows, max_examples: int = 5) -> tuple[list[Row], dict]:
    """Normalise every row; unusable ones are counted and named in the report, the rest are kept."""
    kept, errors = [], []
    for row in rows:
        try:
            kept.append(normalize_row(row))
        except RowError as e:
            errors.append(e)
    report = {"in": len(kept) + len(errors), "kept": len(kept), "dropped": {"unusable_row": len(errors)} if errors else {},
              "examples": {"unusable_row": [str(e) for e in errors[:max_examples]]} if errors else {}}
    return kept, report
