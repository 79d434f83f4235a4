"""Run logging: one JSON object per step in metrics.jsonl, TensorBoard scalars, PNG curves, summary.json."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class RunLog:
    """``log = RunLog(run_dir); log.log(step, {...}); log.summary({...}); log.plot("reward/mean")``.

    On resume, metrics.jsonl is truncated to the steps before ``start_step`` so that a resumed run
    never holds two rows for one step.
    """

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True, start_step: int = 0,
                 config: dict | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        rows = [r for r in self.read() if r.get("step", -1) < start_step] if start_step else []
        with open(self.path, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        if config is not None:
            (self.dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
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
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def summary(self, data: dict[str, Any]) -> Path:
        p = self.dir / "summary.json"
        p.write_text(json.dumps({k: _jsonable(v) for k, v in data.items()}, indent=2, default=str))
        return p

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
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
