"""Drop chats a model should not learn from, and count every drop by reason.

Reasons (the keys of ``report["dropped"]``):
- ``broken_turn``: a message whose content is not a string;
- ``empty_turn``: a message with no text after stripping whitespace;
- ``unknown_role``: a role outside ``allowed_roles``;
- ``bad_encoding``: U+FFFD replacement characters (bytes that were not UTF-8), lone surrogates, control
  characters, or mojibake (UTF-8 that was read as cp1252, e.g. "cafÃ©");
- ``bad_turn_order``: a system message that is not first;
- ``no_assistant_turn``: nothing for the loss to learn (SFT needs at least one assistant turn after a prompt);
- ``too_long``: more than ``max_chars`` characters of content in all.
Kept text is NFC-normalised, so that the same words always become the same tokens and exact dedup sees them.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter

from datapipe.rows import origin_of

DEFAULT_ROLES = ("system", "user", "assistant")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def encoding_problem(text: str) -> str | None:
    """Why ``text`` looks badly decoded, or None."""
    if "\ufffd" in text:
        return "contains U+FFFD (bytes that were not valid UTF-8)"
    if _SURROGATE.search(text):
        return "contains a lone surrogate code point"
    if _CONTROL.search(text):
        return "contains control characters"
    if not text.isascii():
        try:
            fixed = text.encode("cp1252").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return None
        if fixed != text:
            return f"mojibake: UTF-8 read as cp1252 ({text[:30]!r} should read {fixed[:30]!r})"
    return None


def _problem(msgs: list[dict], allowed_roles, max_chars: int | None) -> tuple[str, str] | None:
    total = 0
    for i, m in enumerate(msgs):
        content = m["content"]
        if not isinstance(content, str):
            return "broken_turn", f"message {i} content is {type(content).__name__}, not text"
        if m["role"] not in allowed_roles:
            return "unknown_role", f"message {i} has role {m['role']!r}; allowed: {list(allowed_roles)}"
        if not content.strip():
            return "empty_turn", f"message {i} ({m['role']}) is empty"
        why = encoding_problem(content)
        if why:
            return "bad_encoding", f"message {i}: {why}"
        if m["role"] == "system" and i != 0:
            return "bad_turn_order", f"message {i} is a system message but not the first"
        total += len(content)
    roles = [m["role"] for m in msgs]
    if "assistant" not in roles or roles.index("assistant") == 0 or all(r == "system" for r in roles[:roles.index("assistant")]):
        return "no_assistant_turn", "no assistant message after a prompt"
    if max_chars and total > max_chars:
        return "too_long", f"{total} characters > max_chars={max_chars}"
    return None


def clean_rows(rows, max_chars: int | None = None, allowed_roles=DEFAULT_ROLES,
               max_examples: int = 3) -> tuple[list, dict]:
    """Keep the usable ``{"messages"}`` rows; the report counts (and shows a few of) the dropped ones by reason."""
    kept, dropped, examples = [], Counter(), {}
    for row in rows:
        msgs = row["messages"]
        found = _problem(msgs, tuple(allowed_roles), max_chars)
        if found:
            reason, detail = found
            dropped[reason] += 1
            ex = examples.setdefault(reason, [])
            if len(ex) < max_examples:
                ex.append(f"{origin_of(row)}: {detail}")
            continue
        clean = [{"role": m["role"], "content": unicodedata.normalize("NFC", m["content"])} for m in msgs]
        kept.append(row.derive({**row, "messages": clean}) if hasattr(row, "derive") else {**row, "messages": clean})
    return kept, {"in": len(kept) + sum(dropped.values()), "kept": len(kept), "dropped": dict(dropped),
                  "examples": examples}
