"""Write the small sample datasets shipped in this folder (deterministic; rerun to regenerate).

Three sources in the three common formats, so that the SFT demo exercises the whole pipeline:
- arithmetic_chat.jsonl   OpenAI ``messages``: sums answered as JSON (some with a system prompt, some two-turn);
- wordplay_sharegpt.jsonl ShareGPT ``conversations``: small word tasks, many multi-turn;
- tasks_alpaca.json       Alpaca ``instruction``/``input``/``output`` as a JSON array (the original Alpaca layout).
Each also holds what real data holds: exact and near duplicates, empty turns, unknown roles, mojibake,
a line that is not JSON and a row in no known format, so the data report has something to count.

    python datapipe/samples/build_samples.py
"""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTRUCTION = ' Reply with JSON: {"answer": N}'
SUM_TEMPLATES = ["What is {a}+{b}?", "Compute {a} + {b}.", "{a}+{b}=?", "Add {a} and {b}."]
WORDS = ("river city music book water light tree dog cat red blue green small large night day apple stone cloud "
         "bird fish road house garden window paper table chair song star moon sun rain snow wind fire").split()


def arithmetic(rng: random.Random, n: int = 600) -> list[str]:
    def turn(a: int, b: int) -> list[dict]:
        q = rng.choice(SUM_TEMPLATES).format(a=a, b=b) + INSTRUCTION
        return [{"role": "user", "content": q}, {"role": "assistant", "content": json.dumps({"answer": a + b})}]

    lines = []
    for i in range(n):
        hi = 9 if i % 3 else 20
        msgs = turn(rng.randint(0, hi), rng.randint(0, hi))
        if i % 7 == 0:
            msgs += turn(rng.randint(0, hi), rng.randint(0, hi))
        if i % 5 == 0:
            msgs = [{"role": "system", "content": "You are a helpful assistant. Answer with a JSON object."}] + msgs
        lines.append(json.dumps({"messages": msgs}))
    lines[10] = lines[3]  # an exact duplicate
    lines.append(json.dumps({"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": ""}]}))
    lines.append("{\"messages\": [ this line was cut off")
    return lines


def wordplay(rng: random.Random, n: int = 300) -> list[str]:
    def task() -> tuple[str, str]:
        words = rng.sample(WORDS, rng.randint(2, 5))
        kind = rng.randrange(4)
        if kind == 0:
            return f"Reverse the words: {' '.join(words)}", " ".join(reversed(words))
        if kind == 1:
            return f"Uppercase: {' '.join(words)}", " ".join(words).upper()
        if kind == 2:
            return f"How many words are in: {' '.join(words)}?", str(len(words))
        return f"Sort alphabetically: {', '.join(words)}", ", ".join(sorted(words))

    lines = []
    for i in range(n):
        conv = []
        for _ in range(1 if i % 3 else rng.randint(2, 3)):
            q, a = task()
            conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        lines.append(json.dumps({"conversations": conv}))
    lines += [
        json.dumps({"conversations": [{"from": "human", "value": "Uppercase: caf\u00c3\u00a9"},  # mojibake
                                      {"from": "gpt", "value": "CAF\u00c3\u2030"}]}),
        json.dumps({"conversations": [{"from": "narrator", "value": "Once upon a time"},
                                      {"from": "gpt", "value": "there was a cat"}]}),
        json.dumps({"conversations": [{"from": "human", "value": "   "}, {"from": "gpt", "value": "empty question"}]}),
        json.dumps({"text": "a pretraining document, not a chat"}),
    ]
    return lines


def alpaca(rng: random.Random, n: int = 240) -> list[dict]:
    ops = [("sum", "+"), ("difference", "-"), ("product", "*")]
    rows = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            name, op = rng.choice(ops)
            fn = rng.choice(["f", "calc", "combine", "apply", "op", "go"]) + str(rng.randint(1, 99))
            rows.append({"instruction": f"Write a Python function {fn}(a, b) that returns the {name} of a and b.",
                         "input": "", "output": f"def {fn}(a, b):\n    return a {op} b\n"})
        elif kind == 1:
            nums = [rng.randint(0, 99) for _ in range(rng.randint(3, 6))]
            rows.append({"instruction": "Sort the numbers in ascending order.", "input": " ".join(map(str, nums)),
                         "output": " ".join(map(str, sorted(nums)))})
        else:
            word = rng.choice(WORDS)
            rows.append({"instruction": "Give the word backwards.", "input": word, "output": word[::-1]})
    for src in rows[:12]:  # near duplicates: the same example with a small rewording
        rows.append({**src, "instruction": "Please " + src["instruction"][0].lower() + src["instruction"][1:]})
    rows.append({"instruction": "Translate to French.", "input": "cat", "output": None})  # broken turn
    return rows


def main() -> None:
    rng = random.Random(20261123)
    (HERE / "arithmetic_chat.jsonl").write_text("\n".join(arithmetic(rng)) + "\n")
    (HERE / "wordplay_sharegpt.jsonl").write_text("\n".join(wordplay(rng)) + "\n")
    (HERE / "tasks_alpaca.json").write_text(json.dumps(alpaca(rng), indent=1) + "\n")


if __name__ == "__main__":
    main()
