"""The comparison table every stage reports against: one row per metric, one column per checkpoint, and the
change from the first (baseline) checkpoint -- written as Markdown, JSON and a PNG of bar charts."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

# Which way is better, by the metric's name (the part after "suite/"); anything else is shown without a verdict.
LOWER_IS_BETTER = ("perplexity",)
HIGHER_IS_BETTER = ("format", "json_valid", "json_schema", "exact_match", "pass@", "win_rate")
# Lengths, and the judge's own diagnostics (its verdict in one order only, its agreement across orders).
NEUTRAL = ("len_", "truncated", "win_rate_unswapped", "consistency")


def direction(metric: str, declared: dict | None = None) -> int:
    """+1 if a larger value is better, -1 if a smaller one is, 0 if neither (lengths). ``declared`` (what
    run_panel records: every scorer's rate is a reward, so higher is better) wins over the name."""
    if declared and metric in declared:
        return int(declared[metric])
    name = metric.split("/", 1)[-1]
    if name.startswith(NEUTRAL):
        return 0
    if name.startswith(LOWER_IS_BETTER):
        return -1
    if name.startswith(HIGHER_IS_BETTER) or name.startswith("score"):
        return 1
    return 0


def _metrics_of(result: dict) -> tuple[dict, dict]:
    """A run_panel result ({"metrics", "stderr", ...}) or a plain {metric: value} mapping."""
    if isinstance(result.get("metrics"), dict):
        return result["metrics"], result.get("stderr", {})
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}, {}


def _fmt(v, se=None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    s = f"{v:.4g}" if abs(v) >= 100 else f"{v:.3f}"
    if se is not None and isinstance(se, (int, float)) and math.isfinite(se) and se > 0:
        s += f" ± {se:.3f}"
    return s


def comparison(results_by_checkpoint: dict[str, dict]) -> dict:
    """{"checkpoints": [...], "metrics": {metric: {checkpoint: value}}, "stderr": {...}, "delta": {...}}
    where delta is each checkpoint minus the first one (the baseline)."""
    names = list(results_by_checkpoint)
    per = {n: _metrics_of(r) for n, r in results_by_checkpoint.items()}
    keys: list[str] = []
    for n in names:
        keys += [k for k in per[n][0] if k not in keys]
    table = {k: {n: per[n][0].get(k) for n in names} for k in keys}
    stderr = {k: {n: per[n][1].get(k) for n in names if per[n][1].get(k) is not None} for k in keys}
    declared = {k: v for r in results_by_checkpoint.values() for k, v in (r.get("direction") or {}).items()}
    base = names[0] if names else None
    delta = {k: {n: (v - row[base]) if (v is not None and row.get(base) is not None) else None
                 for n, v in row.items() if n != base} for k, row in table.items()}
    return {"checkpoints": names, "baseline": base, "metrics": table, "stderr": stderr, "delta": delta,
            "direction": {k: direction(k, declared) for k in keys}}


def markdown(comp: dict) -> str:
    names, base = comp["checkpoints"], comp["baseline"]
    head = ["metric", *names] + [f"Δ {n} vs {base}" for n in names[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, row in comp["metrics"].items():
        d = comp["direction"][k]
        vals = [v for v in row.values() if isinstance(v, (int, float))]
        best = (max(vals) if d > 0 else min(vals)) if (d and len(vals) > 1 and len(set(vals)) > 1) else None
        cells = []
        for n in names:
            c = _fmt(row.get(n), comp["stderr"].get(k, {}).get(n))
            cells.append(f"**{c}**" if best is not None and row.get(n) == best else c)
        deltas = [comp["delta"][k].get(n) for n in names[1:]]
        arrow = {1: " ↑", -1: " ↓", 0: ""}[d]
        lines.append("| " + " | ".join([k + arrow, *cells, *[("–" if x is None else f"{x:+.3f}") for x in deltas]]) + " |")
    return "\n".join(lines) + "\n\n↑ higher is better, ↓ lower is better; bold: best checkpoint; ± one standard error.\n"


def plot(comp: dict, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = comp["checkpoints"]
    keys = [k for k, row in comp["metrics"].items() if any(isinstance(v, (int, float)) for v in row.values())]
    if not keys:
        return None
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    colors = [plt.cm.tab10(i % 10) for i in range(len(names))]
    for ax, k in zip(axes.flat, keys):
        vals = [comp["metrics"][k].get(n) for n in names]
        vals = [v if isinstance(v, (int, float)) else float("nan") for v in vals]
        errs = [comp["stderr"].get(k, {}).get(n) or 0.0 for n in names]
        ax.bar(range(len(names)), vals, yerr=errs, color=colors, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(k + {1: " ↑", -1: " ↓", 0: ""}[comp["direction"][k]], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_table(results_by_checkpoint: dict[str, dict], out_dir: str | os.PathLike, stem: str = "comparison") -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.json`` and ``<stem>.png`` to ``out_dir`` comparing the checkpoints
    (insertion order; the first is the baseline of the Δ columns). Values are run_panel results or plain
    {metric: value} mappings. Returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    comp = comparison(results_by_checkpoint)
    paths = {"markdown": out / f"{stem}.md", "json": out / f"{stem}.json", "png": out / f"{stem}.png"}
    paths["markdown"].write_text(markdown(comp))
    details = {n: {k: v for k, v in r.items() if k not in ("metrics", "stderr", "answers", "direction")}
               for n, r in results_by_checkpoint.items() if isinstance(r.get("metrics"), dict)}
    paths["json"].write_text(json.dumps({**comp, "details": details}, indent=2, default=str))
    if plot(comp, paths["png"]) is None:
        del paths["png"]
    return paths
