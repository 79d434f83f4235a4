"""Run logging: one JSON object per step in metrics.jsonl, TensorBoard scalars, PNG curves, summary.json.

metrics.jsonl is appended to one line per step; a run killed mid-append leaves a partial last line, which
``read`` drops with a warning. Every other file here is written atomically (temp sibling, fsync, rename).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from runlog.atomic import atomic_file, atomic_write_text


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a metrics.jsonl file ([] if there is none). A line that does not parse as a JSON object -- the
    partial last line a kill mid-append leaves, or any damaged line -- is dropped with a warning naming it."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            where = "its last line" if i == len(lines) else f"line {i}"
            print(f"warning: {p}: dropped {where}, which is not a whole JSON row (a write cut short?): {line[:80]!r}",
                  file=sys.stderr, flush=True)
            continue
        rows.append(row)
    return rows


class RunLog:
    """``log = RunLog(run_dir); log.log(step, {...}); log.summary({...}); log.plot("reward/mean")``.

    On resume, metrics.jsonl is cut to the steps before ``start_step`` so that a resumed run never holds two
    rows for one step; the cut is atomic (the rows kept are written to a temp file that replaces the old one), so
    a kill during it leaves the old file or the cut one. ``start_step=0`` starts an empty file: whether a run
    folder may be reused at all is :func:`runlog.prepare_run_dir`'s decision, taken before this.
    """

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True, start_step: int = 0,
                 config: dict | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        rows = [r for r in self.read() if r.get("step", -1) < start_step] if start_step else []
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        if config is not None:
            atomic_write_text(self.dir / "config.json", json.dumps(config, indent=2, default=str))
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tb"), purge_step=start_step or None)

    def log(self, step: int, metrics: dict[str, Any]) -> dict:
        row = {"step": int(step), "time": time.time(), **{k: _jsonable(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        return row

    def read(self) -> list[dict]:
        """The rows of metrics.jsonl; a line that is not a JSON object (the partial last line of a run killed
        mid-write) is dropped with a warning."""
        return read_metrics(self.path)

    def summary(self, data: dict[str, Any]) -> Path:
        return atomic_write_text(self.dir / "summary.json",
                                 json.dumps({k: _jsonable(v) for k, v in data.items()}, indent=2, default=str))

    def plot(self, keys: Iterable[str], filename: str = "curves.png", title: str = "") -> Path | None:
        """Plot metrics over steps into one PNG (one panel per key)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read()
        keys = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in rows)]
        if not keys:
            return None
        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
        for ax, k in zip(axes[0], keys):
            pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", lw=1.2)
            ax.set_title(k)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        out = self.dir / filename
        try:
            with atomic_file(out) as tmp:
                fig.savefig(tmp, dpi=110)
        finally:
            plt.close(fig)
        return out

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
