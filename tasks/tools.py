"""Synthetic tasks that need a tool, answered as JSON ``{"answer": N}`` (scored by ``exact_answer`` / ``json_valid``).

- ``calculator``: two-digit by two-digit products ("What is 37*48?"), beyond a tiny model's own arithmetic;
- ``python``: what a line of code computes: the digit sum of ``2**k``, ``x mod m``.

Rows are ``{"prompt": [chat messages], "answer": int, "tool_call": {"name", "arguments"}}``: ``tool_call`` is the
ideal call, for :func:`transcript`. Training and held-out rows use disjoint phrasings, as in tasks/arithmetic.py.
"""
from __future__ import annotations

import json
import random

from tasks.arithmetic import INSTRUCTION

TEMPLATES = {
    "calculator": {
        False: ["What is {a}*{b}?", "Compute {a} * {b}.", "{a}*{b}=?", "Multiply {a} by {b}."],
        True: ["What is the product of {a} and {b}?", "Calculate {a} times {b}."],
    },
    "python": {  # (kind, phrasing)
        False: [("digits", "What is the sum of the digits of 2**{k}?"), ("mod", "What is {x} mod {m}?"),
                ("digits", "Sum the digits of 2**{k}."), ("mod", "{x} % {m} = ?")],
        True: [("digits", "Add up the decimal digits of 2 to the power {k}."),
               ("mod", "What is the remainder of {x} divided by {m}?")],
    },
}


def make_rows(n: int, seed: int = 0, heldout: bool = False, tool: str = "calculator") -> list[dict]:
    """``n`` rows for the task of ``tool`` ("calculator" | "python"), deterministic by seed (see module docstring)."""
    if tool not in TEMPLATES:
        raise ValueError(f"no built-in task for tool {tool!r}; choose one of {sorted(TEMPLATES)}")
    rng = random.Random(seed * 2 + int(heldout))
    templates = TEMPLATES[tool][heldout]
    rows = []
    for _ in range(n):
        if tool == "calculator":
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            text, answer = rng.choice(templates).format(a=a, b=b), a * b
            call = {"name": "calculator", "arguments": {"expression": f"{a}*{b}"}}
        else:
            kind, phrasing = rng.choice(templates)
            if kind == "digits":
                k = rng.randint(20, 60)
                text, answer, code = phrasing.format(k=k), sum(map(int, str(2 ** k))), f"print(sum(map(int,str(2**{k}))))"
            else:
                x, m = rng.randint(1000, 99999), rng.randint(11, 97)
                text, answer, code = phrasing.format(x=x, m=m), x % m, f"print({x}%{m})"
            call = {"name": "python", "arguments": {"code": code}}
        rows.append({"prompt": [{"role": "user", "content": text + INSTRUCTION.format()}], "answer": answer,
                     "tool_call": call})
    return rows


def transcript(row: dict, tool: str = "calculator") -> list[dict]:
    """The ideal tool-using conversation for a warm start: the row's prompt, an assistant turn that is exactly one
    ``<tool_call>`` block (envs.tool_calls.format_tool_call: compact JSON), the tool message with the tool's result,
    and the final assistant turn ``{"answer": N}``. Assistant content is plain text.

    The calculator's result is computed by the calculator itself; the python tool's result is what the row's code
    prints (``str(answer)``, the sandbox's stdout without its final newline -- tests/test_envs.py checks it against a
    real sandboxed run), so that a warm start over thousands of rows starts no sandbox."""
    from envs.tool_calls import format_tool_call
    from envs.tools import calculate

    call = row["tool_call"]
    if call["name"] != tool:
        raise ValueError(f"row's tool_call is for {call['name']!r}, not {tool!r}")
    result = str(calculate(call["arguments"]["expression"])) if tool == "calculator" else str(row["answer"])
    return [*row["prompt"],
            {"role": "assistant", "content": format_tool_call(call["name"], call["arguments"])},
            {"role": "tool", "name": tool, "content": result},
            {"role": "assistant", "content": json.dumps({"answer": row["answer"]})}]


def warm_start_transcript(row: dict, tool: str = "calculator", direct_frac: float = 0.5) -> list[dict]:
    """A warm start's conversation for ``row``: the tool-using :func:`transcript`, or -- for a ``direct_frac`` share
    of the rows, chosen by a hash of the prompt -- the answer given straight away (the right one: the data is
    correct, but a tiny model cannot compute it without the tool). The warmed-up model then answers some prompts from
    its own head, mostly wrongly, and calls the tool on others: RL has a decision to learn (call the tool), with a
    large difference in reward between the two, besides the copying of numbers."""
    import zlib

    if zlib.crc32(json.dumps(row["prompt"]).encode()) % 1000 < direct_frac * 1000:
        return [*row["prompt"], {"role": "assistant", "content": json.dumps({"answer": row["answer"]})}]
    return transcript(row, tool)
