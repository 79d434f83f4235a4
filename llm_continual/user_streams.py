"""Users' own datasets as a task stream: ``continual.tasks=[NAME=TRAIN, NAME=TRAIN,TEST, ...]``.

Each row's phase follows from its columns: ``text`` -> pre-training; ``chosen``/``rejected`` or
``responses``/``scores`` -> alignment; anything the SFT formats accept (OpenAI ``messages``, ShareGPT
``conversations``, Alpaca ``instruction``/``output``, ``prompt``/``completion``) -> instruction. A row that
fits none, or is of another kind than most of its task's rows, is reported with its file and line and skipped;
the rest are kept. A task whose rows are all unusable, or a stream that mixes phases, stops the run before any
model loads.
"""
from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path

from config.loader import ConfigError
from llm_continual.streams import LLMTask

log = logging.getLogger(__name__)


def parse_task_spec(spec: str) -> tuple[str, str, str | None]:
    """``NAME=TRAIN`` or ``NAME=TRAIN,TEST`` -> (name, train, test or None)."""
    name, sep, paths = spec.partition("=")
    name = name.strip()
    if not sep or not name or not paths.strip():
        raise ConfigError(f"continual.tasks: {spec!r} is not NAME=TRAIN or NAME=TRAIN,TEST")
    if not all(c.isalnum() or c in "_-" for c in name):
        raise ConfigError(f"continual.tasks: task name {name!r} may hold only letters, digits, '_' and '-' "
                          "(it names the task's evaluation suites)")
    train, _, test = paths.partition(",")
    return name, train.strip(), (test.strip() or None)


def row_phase(row: dict) -> str:
    if "text" in row:
        return "cpt"
    if ("chosen" in row and "rejected" in row) or "responses" in row:
        return "align"
    return "instruct"


def normalize(row, phase: str) -> dict:
    """One row in the stream's canonical form for ``phase``; raises datapipe's RowError naming the row."""
    from datapipe.rows import RowError, origin_of

    where = origin_of(row)
    if phase == "cpt":
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise RowError(where, "'text' must be a non-empty string")
        return {"text": row["text"]}
    if phase == "instruct":
        from datapipe.formats import normalize_row

        msgs = normalize_row(row)["messages"]
        if not msgs or msgs[-1].get("role") != "assistant" or not isinstance(msgs[-1].get("content"), str):
            raise RowError(where, "an instruction row must end with an assistant turn (the answer to learn)")
        out = {"messages": msgs}
        if "answer" in row:
            out["answer"] = row["answer"]
        return out
    # alignment: graded responses, or a pair (best = chosen, worst = rejected)
    if "responses" in row:
        resp, scores = row.get("responses"), row.get("scores")
        if not isinstance(resp, list) or len(resp) < 2 or not all(isinstance(r, str) for r in resp):
            raise RowError(where, "'responses' must be a list of at least two strings")
        if (not isinstance(scores, list) or len(scores) != len(resp)
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores)):
            raise RowError(where, "'scores' must be a list of numbers, one per response")
        prompt = row.get("prompt")
        if not isinstance(prompt, (str, list)) or not prompt:
            raise RowError(where, "'prompt' must be a string or a list of chat messages")
    else:
        from datapipe.preference import normalize_pair

        pair = normalize_pair(row)
        prompt, resp, scores = pair["prompt"], [pair["chosen"], pair["rejected"]], [1.0, 0.0]
    if isinstance(prompt, str):  # one chat template for every row: a string prompt becomes the user turn
        prompt = [{"role": "user", "content": prompt}]
    best = max(range(len(scores)), key=scores.__getitem__)
    worst = min(range(len(scores)), key=scores.__getitem__)
    return {"prompt": prompt, "responses": resp, "scores": [float(s) for s in scores],
            "chosen": resp[best], "rejected": resp[worst]}


def _read(name: str, spec: str, key: str = "continual.tasks") -> tuple[list[dict], str]:
    from datapipe.io import read_rows
    from datapipe.rows import RowError, origin_of

    errors: list[RowError] = []
    try:
        raw = read_rows(spec, errors=errors)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{key}: task {name!r}: {e}") from None
    # The task's phase is its rows' majority kind; a row of another kind is a stray (reported, skipped).
    kinds = Counter(row_phase(r) for r in raw)
    phase = kinds.most_common(1)[0][0] if kinds else "instruct"
    rows = []
    for r in raw:
        try:
            if row_phase(r) != phase:
                raise RowError(origin_of(r), f"a {row_phase(r)} row in a task of {phase} rows")
            rows.append(normalize(r, phase))
        except RowError as e:
            errors.append(e)
    for e in errors[:5]:
        log.warning("%s %s: row skipped: %s", key, name, e)
    if errors:
        log.warning("%s %s: %d of %d rows skipped", key, name, len(errors), len(errors) + len(rows))
    if not rows:
        first = f"; first problem: {errors[0]}" if errors else ""
        raise ConfigError(f"{key}: task {name!r} ({spec}) has no usable rows{first}")
    return rows, phase


def file_stream(specs: list[str], heldout_fraction: float = 0.2, seed: int = 0) -> list[LLMTask]:
    """The tasks named by ``continual.tasks``, in order; a task without a TEST file holds out a seeded share."""
    tasks, seen = [], set()
    for spec in specs:
        name, train_spec, test_spec = parse_task_spec(spec)
        if name in seen:
            raise ConfigError(f"continual.tasks: the task name {name!r} is used twice")
        seen.add(name)
        train, phase = _read(name, train_spec)
        if test_spec:
            test, test_phase = _read(name, test_spec)
            if test_phase != phase:
                raise ConfigError(f"continual.tasks: task {name!r}: train rows are {phase} rows but test rows are "
                                  f"{test_phase} rows")
        else:
            order = list(range(len(train)))
            random.Random(f"{name}:{seed}").shuffle(order)
            k = max(1, round(heldout_fraction * len(train)))
            if len(train) - k < 1:
                raise ConfigError(f"continual.tasks: task {name!r} has {len(train)} row(s), too few to hold out "
                                  "a test share; give a TEST file (NAME=TRAIN,TEST) or more rows")
            test = [train[i] for i in order[:k]]
            train = [train[i] for i in order[k:]]
        for split, rows in (("train", train), ("test", test)):
            for i, r in enumerate(rows):
                r["uid"] = f"{name}:{split}:{i}"
        tasks.append(LLMTask(name, phase, train, test))
    phases = {t.phase for t in tasks}
    if len(phases) > 1:
        raise ConfigError(f"continual.tasks: the stream mixes phases {[(t.name, t.phase) for t in tasks]}; run one "
                          "stream per phase (pre-training, instruction tuning or alignment)")
    return tasks


def memory_rows(specs: list[str], phase: str, seed: int = 0) -> list[tuple[str, list[dict]]]:
    """``continual.memory`` datasets as (name, rows) past tasks for replay; each must be of the stream's phase."""
    out = []
    for i, spec in enumerate(specs):
        name = f"memory{i}-{Path(spec.removeprefix('samples:')).stem}"
        rows, p = _read(name, spec, "continual.memory")
        if p != phase:
            raise ConfigError(f"continual.memory: {spec} holds {p} rows but the stream is a {phase} stream")
        for j, r in enumerate(rows):
            r["uid"] = f"{name}:train:{j}"
        out.append((name, rows))
    return out
