"""A small deterministic text corpus for training the tiny models' byte-level BPE tokenizer.

It covers what the project's tasks put through the tokenizer: chat markup, arithmetic, JSON, Python,
plain English. Byte-level BPE can encode any text; the corpus only decides which merges exist.
"""
from __future__ import annotations

import json
import random

_WORDS = (
    "the a an of to and in is it that for on with as was be by this are or from at not have you your "
    "what which answer question compute solve sum add plus minus times equals number result value "
    "write return function test code python json object list string true false null model learn "
    "reward policy step good better best bad wrong right yes no please help explain short long "
    "cat dog tree river city music book water light day night small large red blue green"
).split()

_SENTENCES = [
    "You are a helpful assistant.",
    "Answer with a JSON object.",
    "Think step by step, then answer.",
    "Write a Python function that returns the sum of a list.",
    "The quick brown fox jumps over the lazy dog.",
    "Reinforcement learning optimises a policy to maximise reward.",
]

_CODE = [
    "def add(a, b):\n    return a + b\n",
    "def is_even(n):\n    return n % 2 == 0\n",
    "assert add(2, 3) == 5\n",
    "for i in range(10):\n    print(i)\n",
    "import json\nprint(json.dumps({'ok': True}))\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
]


def corpus(seed: int = 0, n: int = 3000) -> list[str]:
    """Return ``n`` short documents drawn deterministically from ``seed``."""
    rng = random.Random(seed)
    docs: list[str] = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            op = rng.choice("+-*")
            docs.append(f"<|im_start|>user\nWhat is {a}{op}{b}? Answer as JSON.<|im_end|>\n"
                        f"<|im_start|>assistant\n{json.dumps({'answer': eval(f'{a}{op}{b}')})}<|im_end|>\n")
        elif kind == 1:
            obj = {rng.choice(_WORDS): rng.choice([rng.randint(-50, 500), rng.choice(_WORDS), True, None, [1, 2]])
                   for _ in range(rng.randint(1, 3))}
            docs.append(json.dumps(obj))
        elif kind == 2:
            docs.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 20))).capitalize() + ".")
        elif kind == 3:
            docs.append(rng.choice(_SENTENCES))
        elif kind == 4:
            docs.append(rng.choice(_CODE))
        else:
            docs.append(f"<|im_start|>system\n{rng.choice(_SENTENCES)}<|im_end|>\n<|im_start|>user\n"
                        f"{' '.join(rng.choice(_WORDS) for _ in range(6))}?<|im_end|>\n")
    return docs
