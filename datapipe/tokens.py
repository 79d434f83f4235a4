"""Chat -> token ids with labels on the assistant turns only, taken from the chat template itself.

The template marks assistant content with ``{% generation %} ... {% endgeneration %}``; transformers'
``apply_chat_template(..., return_assistant_tokens_mask=True)`` turns those marks into a per-token mask.
No string search: whatever the template renders around a turn (role headers, separators) stays unlabelled,
and every assistant turn of a multi-turn chat is labelled, including its end-of-turn token so that the
model learns to stop. ``render_prompt`` is the other direction of the same template: a prompt as the text
a generator continues.
"""
from __future__ import annotations

import re
from collections import Counter

from datapipe.rows import origin_of

IGNORE_INDEX = -100
_GENERATION = re.compile(r"{%-?\s*generation\s*-?%}")


def check_generation_marks(tokenizer) -> None:
    """Raise a ValueError saying what to change when the template cannot give an assistant-only mask."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; SFT on chats "
                         "needs one with {% generation %} marks around assistant content")
    if isinstance(template, dict):  # several named templates: the default one is used
        template = template.get("default", "")
    if not _GENERATION.search(template):
        raise ValueError(f"the chat template of {getattr(tokenizer, 'name_or_path', '')!r} has no {{% generation %}} "
                         "marks, so the assistant-only loss mask cannot be derived from it; wrap assistant content in "
                         "{% generation %}...{% endgeneration %} (see tinymodels/factory.py CHAT_TEMPLATE)")


def tokenize_chat(tokenizer, messages: list[dict]) -> dict:
    """``{"input_ids": [...], "labels": [...]}`` with ``labels[t] = input_ids[t]`` on assistant tokens, else -100."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids = list(out["input_ids"])
    mask = out["assistant_masks"]
    return {"input_ids": ids, "labels": [t if m else IGNORE_INDEX for t, m in zip(ids, mask)]}


def tokenize_rows(rows, tokenizer, max_len: int, max_examples: int = 3) -> tuple[list, dict]:
    """Tokenise ``{"messages"}`` rows; drop (and count) chats longer than ``max_len`` or with no labelled token.

    Long chats are dropped, not truncated: a cut-off answer would teach the model to stop mid-sentence.
    """
    check_generation_marks(tokenizer)
    kept, dropped, examples = [], Counter(), {}
    for row in rows:
        s = tokenize_chat(tokenizer, row["messages"])
        n = len(s["input_ids"])
        reason = ("too_long", f"{n} tokens > max_len={max_len}") if n > max_len else \
            ("no_label_tokens", "the template marked no assistant token") if all(x == IGNORE_INDEX for x in s["labels"]) else None
        if reason:
            dropped[reason[0]] += 1
            ex = examples.setdefault(reason[0], [])
            if len(ex) < max_examples:
                ex.append(f"{origin_of(row)}: {reason[1]}")
            continue
        extra = {k: v for k, v in row.items() if k != "messages"}
        kept.append(row.derive({**s, **extra}) if hasattr(row, "derive") else {**s, **extra})
    tokens = sum(len(s["input_ids"]) for s in kept)
    labels = sum(sum(1 for x in s["labels"] if x != IGNORE_INDEX) for s in kept)
    return kept, {"in": len(kept) + sum(dropped.values()), "kept": len(kept), "dropped": dict(dropped),
                  "examples": examples, "tokens": tokens, "label_tokens": labels}


def render_prompt(tokenizer, prompt: str | list[dict]) -> str:
    """The prompt text a generator continues: chat messages through the chat template with the assistant
    header; a string as it is."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in prompt)
