"""The SFT data pipeline end to end: sources -> packed training rows + packed held-out rows + a report.

    read -> normalise -> clean          (per source)
    exact dedup -> near dedup           (across sources: a row repeated in two sources is one example)
    tokenise with the assistant mask    (per source; too-long chats dropped)
    held-out split                      (per source, before mixing, so held-out rows are never trained on)
    mix -> pack                         (training rows); pack (held-out rows)

Every step's counts go into the report, which ``report_table`` prints one line per step.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from datapipe.clean import clean_rows
from datapipe.dedup import dedup_exact, dedup_near
from datapipe.formats import normalize_rows
from datapipe.io import read_rows
from datapipe.mix import mix_sources
from datapipe.pack import pack_samples
from datapipe.rows import RowError
from datapipe.tokens import tokenize_rows


@dataclass
class SFTData:
    train: list[dict]
    """Packed training rows (input_ids, labels, position_ids, seq_lens, sample_ids)."""
    heldout: list[dict]
    """Packed held-out rows, same layout."""
    report: dict = field(default_factory=dict)
    """Counts at every step (see ``report_table``)."""


def _merge(reports: list[dict]) -> dict:
    out = {"in": 0, "kept": 0, "dropped": {}, "examples": {}}
    for r in reports:
        out["in"] += r["in"]
        out["kept"] += r["kept"]
        for k, v in r.get("dropped", {}).items():
            out["dropped"][k] = out["dropped"].get(k, 0) + v
        for k, v in r.get("examples", {}).items():
            out["examples"].setdefault(k, []).extend(v[: max(0, 3 - len(out["examples"].get(k, [])))])
        for k in ("tokens", "label_tokens"):
            if k in r:
                out[k] = out.get(k, 0) + r[k]
    return out


def heldout_counts(sizes: dict[str, int], fraction: float, cap: int) -> dict[str, int]:
    """Held-out samples per source: round(fraction * n), at least 1 where the source can spare one, scaled to ``cap``."""
    want = {k: (max(1, round(fraction * n)) if fraction > 0 and n >= 2 else 0) for k, n in sizes.items()}
    total = sum(want.values())
    if total > cap:
        want = {k: int(v * cap / total) for k, v in want.items()}
    return want


def build_sft_data(sources: dict[str, float], tokenizer, max_seq_len: int, *, max_chars: int = 0, dedup: bool = True,
                   near_dup_threshold: float = 0.8, num_perm: int = 128, heldout_fraction: float = 0.05,
                   heldout_max: int = 256, mix: str = "weights", mix_temperature: float = 2.0, mix_total: int = 0,
                   seed: int = 0) -> SFTData:
    """Run the whole pipeline on ``sources`` (dataset spec -> weight) for ``tokenizer``'s chat template."""
    names = [n for n, w in sources.items() if mix == "temperature" or w > 0]
    report: dict = {"sources": {}}

    # 1. Per source: read, normalise, clean. Unusable rows are reported by file and row, the rest kept.
    group: dict[int, str] = {}  # id(row) -> source name; dedup returns the very row objects it keeps
    pooled = []
    for name in names:
        errors: list[RowError] = []
        rows = read_rows(name, errors=errors)
        read = {"in": len(rows) + len(errors), "kept": len(rows),
                "dropped": {"unreadable_row": len(errors)} if errors else {},
                "examples": {"unreadable_row": [str(e) for e in errors[:3]]} if errors else {}}
        rows, norm = normalize_rows(rows)
        rows, clean = clean_rows(rows, max_chars=max_chars or None)
        report["sources"][name] = {"read": read, "normalize": norm, "clean": clean}
        for r in rows:
            group[id(r)] = name
        pooled += rows

    # 2. Dedup across sources (first occurrence wins: sources in the order given).
    if dedup:
        pooled, report["dedup_exact"] = dedup_exact(pooled)
        pooled, report["dedup_near"] = dedup_near(pooled, threshold=near_dup_threshold, num_perm=num_perm, seed=seed + 1)

    # 3. Tokenise with the template's assistant mask.
    by_source: dict[str, list] = {n: [] for n in names}
    for r in pooled:
        by_source[group[id(r)]].append(r)
    tok_reports = []
    for name in names:
        by_source[name], rep = tokenize_rows(by_source[name], tokenizer, max_seq_len)
        tok_reports.append(rep)
    report["tokenize"] = _merge(tok_reports)

    # 4. Held-out split per source, before mixing: mixing repeats rows, and held-out rows must stay unseen.
    rng = random.Random(seed)
    n_held = heldout_counts({n: len(v) for n, v in by_source.items()}, heldout_fraction, heldout_max)
    train_by_source, heldout = {}, []
    for name in names:
        rows = by_source[name][:]
        rng.shuffle(rows)
        heldout += rows[:n_held[name]]
        train_by_source[name] = rows[n_held[name]:]
    report["split"] = {n: {"train": len(train_by_source[n]), "heldout": n_held[n]} for n in names}
    empty = [n for n in names if not train_by_source[n]]
    if len(empty) == len(names):
        raise ValueError("no training samples left after cleaning, dedup and tokenising; see the data report:\n"
                         + report_table(report))
    if empty and mix == "weights":
        raise ValueError(f"sources {empty} have no training samples left but have weights > 0; fix them or set their "
                         "weight to 0. Data report:\n" + report_table(report))

    # 5. Mix, then pack.
    weights = {n: sources[n] for n in names} if mix == "weights" else None
    mixed, report["mix"] = mix_sources(train_by_source, weights=weights,
                                       temperature=mix_temperature if mix == "temperature" else None,
                                       total=mix_total or None, seed=seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_rows, report["pack_train"] = pack_samples(mixed, max_seq_len, pad)
    heldout_rows, report["pack_heldout"] = pack_samples(heldout, max_seq_len, pad)
    return SFTData(train_rows, heldout_rows, report)


def _steps(report: dict) -> list[tuple[str, dict]]:
    out = [(f"{step} {name}", r) for name, steps in report.get("sources", {}).items() for step, r in steps.items()]
    return out + [(step, report[step]) for step in ("dedup_exact", "dedup_near", "tokenize", "mix") if step in report]


def report_table(report: dict) -> str:
    """One line per step: rows in, rows kept, what was dropped and why; then one example per reason."""
    out = ["data report (rows in -> kept)"]
    for step, r in _steps(report):
        drops = ", ".join(f"{k} {v}" for k, v in sorted(r.get("dropped", {}).items())) or "-"
        out.append(f"  {step:<48} {r['in']:>7} -> {r['kept']:<7} dropped: {drops}")
    if "split" in report:
        out.append("  split (train / heldout): " + ", ".join(f"{n} {s['train']}/{s['heldout']}"
                                                             for n, s in report["split"].items()))
    for step in ("pack_train", "pack_heldout"):
        if step in report:
            r = report[step]
            out.append(f"  {step:<48} {r['in']:>7} samples -> {r['rows']} rows of {r['row_len']} tokens, "
                       f"fill {r['fill']:.1%}")
    for step, r in _steps(report):
        for reason, examples in r.get("examples", {}).items():
            out.append(f"    e.g. {reason}: {examples[0]}")
    return "\n".join(out)
