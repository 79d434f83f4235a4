"""Suites: a small YAML card (what to measure) next to a data file in the training formats (what to measure it on).

A suite is named by a built-in name (``arithmetic`` -> evalpanel/suites/arithmetic.yaml), by a path to a
card, or -- for the two kinds that need no scorer options -- by ``perplexity:PATH`` / ``win_rate:PATH``
with PATH a JSONL/JSON/Parquet file or a saved ``datasets`` folder.

Card fields are :class:`SuiteSpec`'s; a wrong key or value raises ``ConfigError`` naming the card and the key.
Rows are the training formats: ``prompt`` (a string, or a list of chat messages) with extra columns the
scorers compare against (``answer``, ``tests``, ...); ``messages`` (the last assistant turn is the reference
answer); ``prompt``/``completion``; ``text`` (perplexity only).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from config.loader import ConfigError, check, from_dict

SUITES_DIR = Path(__file__).resolve().parent / "suites"
KINDS = ("generate", "pass_at_k", "perplexity", "win_rate")


@dataclass
class ScorerSpec:
    """One metric of a generate / pass_at_k suite: a scorer from rewards.registry and where its reference is."""

    scorer: str = ""
    """Scorer name in rewards.registry (json_valid, json_schema, exact_answer, format, python_unit_tests, ...)."""
    reference: str = ""
    """Row column handed to the scorer as the reference (empty: `reference_value`)."""
    reference_value: Any = None
    """One reference for every row, written in the card (e.g. the JSON Schema all answers must follow)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the scorer (e.g. format's ``pattern``, json_schema's ``schema``)."""


@dataclass
class SuiteSpec:
    kind: Literal["generate", "pass_at_k", "perplexity", "win_rate"] = "generate"
    """generate: greedy answers scored by `scorers`; pass_at_k: `n_samples` sampled answers per prompt, unbiased
    pass@k of the first scorer; perplexity: held-out likelihood, no generation; win_rate: answers judged
    against an opponent's (the rows' `completion`, else the baseline checkpoint's)."""
    data: str = ""
    """Data file (relative paths are relative to the card), or a `samples:NAME` from datapipe/samples."""
    description: str = ""
    """One line for the report."""
    scorers: dict[str, ScorerSpec] = field(default_factory=dict)
    """Metric name -> scorer. The metric shows up as `<suite>/<metric>`."""
    n_samples: int = 1
    """Answers sampled per prompt (pass_at_k needs at least max(k))."""
    k: list[int] = field(default_factory=lambda: [1])
    """The k of pass@k."""
    temperature: float = 0.0
    """Sampling temperature (0 = greedy; pass_at_k wants > 0)."""
    max_new_tokens: int = 0
    """Longest answer (0: eval.max_new_tokens)."""
    stop: list[str] = field(default_factory=list)
    """Stop strings."""
    limit: int = 0
    """Rows used (0: all, capped by eval.limit)."""
    env: dict[str, Any] = field(default_factory=dict)
    """A tool-use suite: the environment its answers are produced in, as ``env.*`` keys (config/envs.py: name,
    tools, max_turns, max_tokens, ...); the scorers then score each trajectory's final answer, and the suite also
    reports turns, tool-call validity, tool errors and the share of answers that used a tool. {} = one turn."""
    without_tools: bool = False
    """A tool-use suite: run it a second time with no tool offered and report every metric ``<metric>_no_tools``
    too (what the tools are worth to this model)."""

    def __post_init__(self):
        check(self.n_samples >= 1, "n_samples", "must be >= 1")
        check(all(k >= 1 for k in self.k), "k", f"every k must be >= 1, got {self.k}")
        check(self.temperature >= 0, "temperature", "must be >= 0")
        if self.kind in ("generate", "pass_at_k"):
            check(bool(self.scorers), "scorers", f"a {self.kind} suite needs at least one scorer")
        if self.kind == "pass_at_k":
            check(self.n_samples >= max(self.k), "n_samples",
                  f"pass@{max(self.k)} needs n_samples >= {max(self.k)}, got {self.n_samples}")
            check(self.temperature > 0, "temperature", "pass_at_k samples need temperature > 0 (greedy gives n copies)")
        else:
            check(self.temperature > 0 or self.n_samples == 1, "n_samples", "greedy decoding (temperature 0) needs n_samples=1")
        if self.env:
            from config.envs import EnvConfig

            check(self.kind == "generate", "env", f"a tool-use suite is kind: generate, not {self.kind}")
            self.env_config = from_dict(EnvConfig, self.env, "env.")
            check(bool(self.env_config.name), "env.name", "a tool-use suite names its environment (e.g. calculator)")
        check(not self.without_tools or bool(self.env), "without_tools", "needs env (a tool-use suite)")


@dataclass
class Suite:
    name: str
    spec: SuiteSpec
    rows: list[dict]
    source: str


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(ref: str, limit: int = 0) -> Suite:
    """Resolve a suite reference (built-in name, card path, or ``KIND:DATA``) and read its rows."""
    kind, _, data = ref.partition(":")
    if data and kind in ("perplexity", "win_rate"):
        spec, base, name = SuiteSpec(kind=kind, data=data), Path.cwd(), Path(data).stem
    else:
        card = _card_path(ref)
        try:
            raw = yaml.safe_load(card.read_text()) or {}
            spec = from_dict(SuiteSpec, raw)
        except (ConfigError, yaml.YAMLError) as e:
            raise ConfigError(f"suite card {card}: {e}") from None
        base, name = card.parent, card.stem
    if not spec.data:
        raise ConfigError(f"suite {ref!r}: `data` is empty; name a JSONL/Parquet file or a saved datasets folder")
    source = spec.data if spec.data.startswith("samples:") or Path(spec.data).is_absolute() else str(base / spec.data)
    rows = _read(source, ref)
    cap = min(x for x in (spec.limit, limit, len(rows)) if x > 0) if rows else 0
    rows = rows[:cap]
    for r in rows:
        _check_row(r, spec, ref)
    return Suite(name=name, spec=spec, rows=rows, source=source)


def load_suites(refs: list, limit: int = 0) -> list[Suite]:
    """Every suite of ``refs`` (references or already loaded Suites); two suites may not share a name, since
    metrics are named ``<suite>/<metric>``."""
    suites = [r if isinstance(r, Suite) else load_suite(r, limit) for r in refs]
    names = [s.name for s in suites]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"eval.suites: more than one suite is named {dup}; metrics are named <suite>/<metric>, "
                          "so rename a card or a data file")
    return suites


def _card_path(ref: str) -> Path:
    p = Path(ref)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"suite card {ref} does not exist")
        return p
    cand = SUITES_DIR / f"{ref}.yaml"
    if not cand.exists():
        raise ConfigError(f"no built-in suite {ref!r}; built-ins: {builtin_suites()}, or give a suite card (.yaml) or "
                          f"perplexity:DATA / win_rate:DATA")
    return cand


def _read(source: str, ref: str) -> list[dict]:
    from datapipe.io import read_rows
    from datapipe.rows import RowError

    errors: list[RowError] = []
    try:
        rows = read_rows(source, errors=errors)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"suite {ref!r}: {e}") from None
    if errors:
        raise ConfigError(f"suite {ref!r}: {len(errors)} unreadable row(s); first: {errors[0]}")
    if not rows:
        raise ConfigError(f"suite {ref!r}: {source} has no rows")
    return rows


def _check_row(row, spec: SuiteSpec, ref: str) -> None:
    where = getattr(row, "origin", "a row")
    if spec.kind == "perplexity":
        ok = "text" in row or "messages" in row or ("prompt" in row and "completion" in row)
        if not ok:
            raise ConfigError(f"suite {ref!r}, {where}: a perplexity row needs 'text', 'messages' or "
                              f"'prompt'+'completion'; it has {sorted(row)}")
        return
    if "prompt" not in row and "messages" not in row:
        raise ConfigError(f"suite {ref!r}, {where}: needs a 'prompt' (string or chat messages) or 'messages' column; "
                          f"it has {sorted(row)}")
    for metric, s in spec.scorers.items():
        if s.reference and s.reference not in row:
            raise ConfigError(f"suite {ref!r}, {where}: scorer {metric!r} reads the reference from column "
                              f"{s.reference!r}, which this row lacks (columns: {sorted(row)})")


def prompt_of(row: dict) -> str | list[dict]:
    """The prompt to answer: ``prompt`` as given, or ``messages`` without a final assistant turn."""
    if "prompt" in row:
        return row["prompt"]
    msgs = list(row["messages"])
    return msgs[:-1] if msgs and msgs[-1].get("role") == "assistant" else msgs


def reference_answer(row: dict) -> str | None:
    """An opponent / reference completion carried by the row: ``completion``, ``chosen`` or the final assistant
    turn of ``messages``; None if the row has none."""
    for key in ("completion", "chosen"):
        v = row.get(key)
        if isinstance(v, str):
            return v
        if isinstance(v, list) and v and isinstance(v[-1], dict):
            return v[-1].get("content")
    msgs = row.get("messages")
    if "prompt" not in row and isinstance(msgs, list) and msgs and msgs[-1].get("role") == "assistant":
        return msgs[-1].get("content")
    return None
