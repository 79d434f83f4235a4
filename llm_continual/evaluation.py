"""Every task of a stream as evaluation-panel suites, and the score of a task from the panel's metrics.

Scores (higher is better, the entries of the accuracy matrix R[t][i]):

- likelihood (every phase):  pre-training and instruction: s = -log PPL of the task's held-out text (all tokens)
  or answers (assistant turns) -- the mean token log-likelihood, in nats. Alignment: the log-perplexity margin
  s = log PPL(rejected) - log PPL(chosen) over the held-out prompts' worst and best responses: > 0 when the
  model finds the preferred responses likelier per token.
- generate: instruction: exact match of greedy answers (``exact_answer`` on the ``answer`` column);
  alignment: the task's preference scorer on greedy answers. Both through the vLLM engine.

Each suite is written under ``<run>/suites/`` as JSONL (+ a card for generate suites) and named after its
task, so a metric reads ``<task>/perplexity``, ``<task>_chosen/perplexity``, ``<task>_gen/exact_match``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llm_continual.streams import LLMTask, prompt_messages


@dataclass
class TaskSuites:
    task: str
    phase: str
    refs: list[str]
    """Suite references for run_panel."""
    keys: dict[str, str] = field(default_factory=dict)
    """What the score is made of: role -> metric name."""


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path.resolve())


def _card(path: Path, card: dict) -> str:
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return str(path.resolve())


def write_suites(tasks: list[LLMTask], out_dir: str | Path, score: str) -> dict[str, TaskSuites]:
    """Write each task's held-out rows as the suites its score needs; returns task name -> TaskSuites."""
    out = Path(out_dir)
    suites: dict[str, TaskSuites] = {}
    for t in tasks:
        if t.phase == "cpt":
            path = _jsonl(out / f"{t.name}.jsonl", [{"text": r["text"]} for r in t.test])
            suites[t.name] = TaskSuites(t.name, t.phase, [f"perplexity:{path}"], {"ppl": f"{t.name}/perplexity"})
        elif t.phase == "instruct":
            if score == "generate":
                if any("answer" not in r for r in t.test):
                    raise ValueError(f"task {t.name}: continual.score=generate needs an 'answer' column in the test rows "
                                     "(the reference for exact match); use continual.score=likelihood")
                data = _jsonl(out / f"{t.name}_gen.jsonl", [{"prompt": prompt_messages(r), "answer": r["answer"]} for r in t.test])
                card = _card(out / f"{t.name}_gen.yaml", {
                    "description": f"greedy answers to {t.name}", "kind": "generate", "data": data,
                    "scorers": {"exact_match": {"scorer": "exact_answer", "reference": "answer"}}})
                suites[t.name] = TaskSuites(t.name, t.phase, [card], {"acc": f"{t.name}_gen/exact_match"})
            else:
                path = _jsonl(out / f"{t.name}.jsonl", [{"messages": r["messages"]} for r in t.test])
                suites[t.name] = TaskSuites(t.name, t.phase, [f"perplexity:{path}"], {"ppl": f"{t.name}/perplexity"})
        else:
            if score == "generate":
                if not t.scorer:
                    raise ValueError(f"task {t.name}: continual.score=generate needs a preference scorer, which only "
                                     "built-in alignment tasks carry; use continual.score=likelihood")
                data = _jsonl(out / f"{t.name}_gen.jsonl", [{"prompt": r["prompt"]} for r in t.test])
                card = _card(out / f"{t.name}_gen.yaml", {
                    "description": f"greedy answers judged by {t.name}'s preference", "kind": "generate", "data": data,
                    "scorers": {"preference": {"scorer": t.scorer["scorer"], "options": t.scorer.get("options", {})}}})
                suites[t.name] = TaskSuites(t.name, t.phase, [card], {"acc": f"{t.name}_gen/preference"})
            else:
                refs = []
                for side in ("chosen", "rejected"):
                    path = _jsonl(out / f"{t.name}_{side}.jsonl",
                                  [{"prompt": r["prompt"], "completion": r[side]} for r in t.test])
                    refs.append(f"perplexity:{path}")
                suites[t.name] = TaskSuites(t.name, t.phase, refs, {"chosen": f"{t.name}_chosen/perplexity",
                                                                    "rejected": f"{t.name}_rejected/perplexity"})
    return suites


def task_score(s: TaskSuites, metrics: dict[str, float]) -> float:
    """The task's score from a run_panel result's metrics (see the module docstring)."""
    if "acc" in s.keys:
        return float(metrics[s.keys["acc"]])
    if "ppl" in s.keys:
        return -math.log(metrics[s.keys["ppl"]])
    return math.log(metrics[s.keys["rejected"]]) - math.log(metrics[s.keys["chosen"]])


def needs_engine(suites: dict[str, TaskSuites]) -> bool:
    return any(not r.startswith("perplexity:") for s in suites.values() for r in s.refs)
