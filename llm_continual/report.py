"""The methods' comparison: one row per method (OP, BWT, FWT, forgetting, general-ability deltas, time), as
Markdown and JSON, plus the accuracy matrices as heatmaps and the headline numbers as bars.

OP (overall performance) is the mean score over all tasks after the last one, ACC of Lopez-Paz & Ranzato 2017;
BWT, FWT and forgetting are continual.metrics'. The general-ability delta is each general suite's metric of the
final model minus the starting model's (signs as the panel reports them: lower perplexity is better).
"""
from __future__ import annotations

import json
import math
from pathlib import Path


def method_row(method: str, R: list[list[float]], b: list[float], general_delta: dict[str, float],
               seconds: float) -> dict:
    from continual.metrics import summarize

    m = summarize(R, b)
    return {"method": method, "OP": m["cl/acc"], "BWT": m["cl/bwt"], "FWT": m["cl/fwt"],
            "forgetting": m["cl/forgetting"], **{f"Δ {k}": v for k, v in general_delta.items()}, "seconds": seconds}


def _fmt(key: str, v) -> str:
    if not isinstance(v, float):
        return str(v)
    if not math.isfinite(v):
        return "–"
    if key == "seconds":
        return f"{v:.0f}"
    return f"{v:+.3f}" if abs(v) < 100 else f"{v:+.0f}"


def markdown(rows: list[dict], score: str) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(k, r.get(k, "–")) for k in keys) + " |")
    note = ("score: mean token log-likelihood of held-out text/answers (alignment: log-perplexity margin rejected - "
            "chosen), higher is better" if score == "likelihood" else "score: greedy answers scored by the task's scorer")
    return "\n".join(lines) + f"\n\nOP = mean score over all tasks after the last; BWT < 0 = forgetting; {note}.\n"


def write_table(rows: list[dict], out_dir: str | Path, score: str) -> dict[str, Path]:
    out = Path(out_dir)
    paths = {"markdown": out / "methods.md", "json": out / "methods.json"}
    paths["markdown"].write_text(markdown(rows, score))
    paths["json"].write_text(json.dumps(rows, indent=2))
    return paths


def plot_matrices(matrices: dict[str, list[list[float]]], task_names: list[str], path: str | Path) -> Path:
    """One heatmap per method (four to a row): R[t][i], rows = after training task t, columns = evaluated task i."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(matrices)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols + 1.2, 2.7 * rows + 0.3), squeeze=False,
                             constrained_layout=True)
    allv = np.array([v for R in matrices.values() for row in R for v in row], dtype=float)
    lo, hi = float(np.nanmin(allv)), float(np.nanmax(allv))
    for k, (ax, (method, R)) in enumerate(zip(axes.flat, matrices.items())):
        im = ax.imshow(np.array(R, dtype=float), vmin=lo, vmax=hi, cmap="viridis")
        for t, row in enumerate(R):
            for i, v in enumerate(row):
                ax.text(i, t, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="k" if v > lo + 0.7 * (hi - lo) else "w")
        ax.set_title(method, fontsize=9)
        ax.set_xticks(range(len(task_names)), task_names, rotation=35, ha="right", fontsize=7)
        ax.set_yticks(range(len(R)), [f"after {task_names[t]}" for t in range(len(R))] if k % cols == 0 else [],
                      fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="score (higher is better)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_methods(rows: list[dict], path: str | Path, keys=("OP", "BWT", "forgetting")) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.0), squeeze=False)
    names = [r["method"] for r in rows]
    for ax, k in zip(axes[0], keys):
        ax.bar(range(len(rows)), [r[k] for r in rows], color=[plt.cm.tab10(i % 10) for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(k + {"OP": " ↑", "BWT": " ↑", "forgetting": " ↓"}.get(k, ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
