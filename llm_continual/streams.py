"""Built-in task streams for the three phases of LLM continual learning, synthetic and small enough for CPU.

- ``cpt`` (continual pre-training): plain text from new domains in turn -- arithmetic statements, Python,
  JSON records, English prose -- scored by the perplexity of each domain's held-out text.
- ``instruct`` (continual instruction tuning, task-incremental): a new instruction task per stage (add two
  numbers, reverse a word, capitalise it, count its letters, pick the larger number), every answer the JSON
  object ``{"answer": ...}``; the instruction names the task.
- ``instruct-domain`` (domain-incremental): one task -- a sum -- whose inputs move to new domains (single
  digits, two-digit numbers, numbers written as words).
- ``align`` (continual alignment): preferences that change from stage to stage, each over its own kind of
  prompt: answer sums as JSON, greet people politely by name, name things in one word. Every prompt comes
  with four graded responses (``responses`` / ``scores``), best and worst also as ``chosen`` / ``rejected``.

Rows carry a ``uid`` (``<task>:<split>:<i>``) so that a row keeps its identity through replay buffers.
Users' own datasets enter through :mod:`llm_continual.user_streams` as the same :class:`LLMTask`.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Callable, Literal

Phase = Literal["cpt", "instruct", "align"]

WORDS = ["cat", "dog", "tree", "river", "city", "music", "book", "water", "light", "night", "apple", "stone",
         "cloud", "house", "bird", "fish", "green", "table", "chair", "plant", "road", "sun", "moon", "star"]
NAMES = ["Ann", "Bob", "Cara", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivy", "Jon", "Kim", "Leo", "Mia", "Ned",
         "Ola", "Pia", "Quin", "Rex", "Sam", "Tia"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
CATEGORIES = {"colour": ["red", "blue", "green", "yellow", "black", "white"],
              "animal": ["cat", "dog", "bird", "fish", "horse", "mouse"],
              "fruit": ["apple", "pear", "plum", "grape", "lemon", "mango"]}


@dataclass
class LLMTask:
    """One stage of a stream: rows to learn from and held-out rows to be scored on."""

    name: str
    """Unique within the stream; names the task's evaluation suites and its column of the accuracy matrix."""
    phase: Phase
    train: list[dict]
    test: list[dict]
    scorer: dict = field(default_factory=dict)
    """Alignment tasks: the scorer (rewards.registry name + options) that judges a generated answer by this
    task's preference, for the ``generate`` score."""


def _json_answer(value) -> str:
    return json.dumps({"answer": value})


def _chat(user: str, answer) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": _json_answer(answer)}],
            "answer": answer}


# -- continual pre-training: one text domain per task ------------------------------------------------------
def _arith_text(rng: random.Random) -> dict:
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    return {"text": rng.choice([f"{a} plus {b} makes {a + b}.", f"{a} and {b} add up to {a + b}.",
                                f"the sum of {a} and {b} is {a + b}."])}


def _code_text(rng: random.Random) -> dict:
    n, op = rng.randint(1, 9), rng.choice(["+", "-", "*"])
    name = rng.choice(["add", "scale", "shift", "step", "bump"])
    return {"text": f"def {name}_{n}(x):\n    return x {op} {n}\n"}


def _json_text(rng: random.Random) -> dict:
    return {"text": json.dumps({"name": rng.choice(WORDS), "count": rng.randint(0, 99), "ok": rng.random() < 0.5})}


def _prose_text(rng: random.Random) -> dict:
    a, b = rng.sample(WORDS, 2)
    return {"text": f"the {rng.choice(['red', 'blue', 'small', 'old', 'quiet'])} {a} "
                    f"{rng.choice(['sits', 'waits', 'sleeps', 'runs'])} near the {b}."}


CPT_DOMAINS: dict[str, Callable[[random.Random], dict]] = {
    "arith_text": _arith_text, "code_text": _code_text, "json_text": _json_text, "prose_text": _prose_text}


# -- continual instruction tuning: a new task per stage ----------------------------------------------------
def _add(rng: random.Random) -> dict:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return _chat(rng.choice([f"Add {a} and {b}.", f"What is {a} plus {b}?"]), a + b)


def _reverse(rng: random.Random) -> dict:
    w = rng.choice(WORDS)
    return _chat(rng.choice([f"Reverse the word {w}.", f"Write {w} backwards."]), w[::-1])


def _upper(rng: random.Random) -> dict:
    w = rng.choice(WORDS)
    return _chat(rng.choice([f"Write {w} in capitals.", f"Uppercase the word {w}."]), w.upper())


def _count(rng: random.Random) -> dict:
    w = rng.choice(WORDS)
    return _chat(rng.choice([f"How many letters are in {w}?", f"Count the letters of {w}."]), len(w))


def _larger(rng: random.Random) -> dict:
    a, b = rng.sample(range(10), 2)
    return _chat(rng.choice([f"Which is larger, {a} or {b}?", f"Pick the bigger number: {a} or {b}."]), max(a, b))


INSTRUCT_TASKS: dict[str, Callable[[random.Random], dict]] = {
    "add": _add, "reverse": _reverse, "upper": _upper, "count": _count, "larger": _larger}


# -- domain-incremental: one task (a sum), new input domains ------------------------------------------------
def _sum_digits(rng: random.Random) -> dict:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return _chat(f"What is {a}+{b}?", a + b)


def _sum_tens(rng: random.Random) -> dict:
    a, b = rng.randint(10, 49), rng.randint(10, 49)
    return _chat(f"What is {a}+{b}?", a + b)


def _sum_words(rng: random.Random) -> dict:
    a, b = rng.randint(0, 19), rng.randint(0, 19)
    return _chat(f"What is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}?", a + b)


DOMAIN_TASKS: dict[str, Callable[[random.Random], dict]] = {
    "sum_digits": _sum_digits, "sum_tens": _sum_tens, "sum_words": _sum_words}


# -- continual alignment: a new preference per stage ---------------------------------------------------------
def _graded(prompt: str, responses: list[str], scores: list[float]) -> dict:
    best = max(range(len(scores)), key=scores.__getitem__)
    worst = min(range(len(scores)), key=scores.__getitem__)
    return {"prompt": [{"role": "user", "content": prompt}], "responses": responses, "scores": scores,
            "chosen": responses[best], "rejected": responses[worst]}


def _prefer_json(rng: random.Random) -> dict:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    wrong = (a + b + rng.randint(1, 5)) % 19
    return _graded(f"What is {a}+{b}?", [_json_answer(a + b), f"The answer is {a + b}.", _json_answer(wrong),
                                         "I am not sure."], [1.0, 0.5, 0.2, 0.0])


def _prefer_polite(rng: random.Random) -> dict:
    n = rng.choice(NAMES)
    return _graded(f"Greet {n}.", [f"Hello {n}, nice to meet you!", f"Hello {n}.", "hi", "go away"],
                   [1.0, 0.6, 0.2, 0.0])


def _prefer_concise(rng: random.Random) -> dict:
    cat = rng.choice(sorted(CATEGORIES))
    item = rng.choice(CATEGORIES[cat])
    return _graded(f"Name a {cat}.", [f"{item}.", f"Well, one {cat} that comes to mind is {item}, I think.",
                                      "I do not know.", f"{cat} {cat} {cat} {cat}"], [1.0, 0.4, 0.1, 0.0])


ALIGN_TASKS: dict[str, tuple[Callable[[random.Random], dict], dict]] = {
    "prefer_json": (_prefer_json, {"scorer": "format", "options": {"pattern": r'\s*\{\s*"answer"\s*:\s*-?\d+\s*\}\s*'}}),
    "prefer_polite": (_prefer_polite, {"scorer": "format", "options": {"pattern": r"\s*Hello \w+, nice to meet you!\s*"}}),
    "prefer_concise": (_prefer_concise, {"scorer": "format", "options": {"pattern": r"\s*\w+\.\s*"}}),
}


def _rows(make: Callable[[random.Random], dict], n: int, seed: int, name: str, split: str) -> list[dict]:
    rng = random.Random(f"{name}:{split}:{seed}")
    return [{"uid": f"{name}:{split}:{i}", **make(rng)} for i in range(n)]


def builtin_stream(stream: str, n_tasks: int, train_size: int, test_size: int, seed: int = 0,
                   names: list[str] | None = None) -> list[LLMTask]:
    """The first ``n_tasks`` tasks of built-in ``stream`` (cpt | instruct | instruct-domain | align), or the tasks
    ``names`` in that order.

    Train and test rows come from separate seeded generators, so a test row can repeat a training row only
    when the task's input space is that small (single-digit sums), as in real held-out sets of such tasks."""
    table: dict[str, tuple[Callable, Phase, dict]]
    if stream == "cpt":
        table = {k: (f, "cpt", {}) for k, f in CPT_DOMAINS.items()}
    elif stream == "instruct":
        table = {k: (f, "instruct", {}) for k, f in INSTRUCT_TASKS.items()}
    elif stream == "instruct-domain":
        table = {k: (f, "instruct", {}) for k, f in DOMAIN_TASKS.items()}
    elif stream == "align":
        table = {k: (f, "align", sc) for k, (f, sc) in ALIGN_TASKS.items()}
    else:
        raise ValueError(f"unknown built-in stream {stream!r}; choose cpt, instruct, instruct-domain or align")
    if names:
        unknown = [n for n in names if n not in table]
        if unknown:
            raise ValueError(f"stream {stream!r} has no task(s) {unknown}; its tasks: {list(table)}")
        picked = list(names)
    elif n_tasks > len(table):
        raise ValueError(f"continual.n_tasks={n_tasks} but stream {stream!r} has {len(table)} tasks ({list(table)})")
    else:
        picked = list(table)[:n_tasks]
    return [LLMTask(name, table[name][1], _rows(table[name][0], train_size, seed, name, "train"),
                    _rows(table[name][0], test_size, seed, name, "test"), scorer=dict(table[name][2]))
            for name in picked]


def instruction_text(row: dict) -> str:
    """What a row asks for, as text: the user turns of a chat or prompt, or the text itself (pre-training).
    InsCL embeds these and tags them."""
    if "text" in row:
        return row["text"]
    msgs = row.get("messages") or row.get("prompt") or []
    if isinstance(msgs, str):
        return msgs
    return "\n".join(m["content"] for m in msgs if m.get("role") != "assistant")


def prompt_messages(row: dict) -> list[dict]:
    """The conversation up to (not including) the final assistant turn."""
    if "prompt" in row:
        return list(row["prompt"])
    msgs = list(row["messages"])
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    return msgs
