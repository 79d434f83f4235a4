"""Atomic, rotated checkpoints: write into a temporary folder, write the completion marker last, rename.

A run killed with SIGKILL at any instant leaves either a complete checkpoint or a temporary folder that
``latest_checkpoint`` ignores (and the next save sweeps away).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

MARKER = "COMPLETE"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_checkpoint(ckpt_root: str | os.PathLike, step: int, write: Callable[[Path], None], meta: dict,
                    keep: int = 2) -> Path:
    """Create ``ckpt_root/step-XXXXXX``: ``write(tmp_dir)`` fills it, then ``meta.json`` and the marker.

    Keeps the newest ``keep`` complete checkpoints; incomplete leftovers are removed.
    """
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, default=str))
    with open(tmp / MARKER, "w") as f:
        f.write(str(step))
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    complete = sorted(p for p in root.glob("step-*") if (p / MARKER).exists())
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    """The newest checkpoint folder whose completion marker exists, or None."""
    root = Path(ckpt_root)
    if not root.exists():
        return None
    complete = sorted(p for p in root.glob("step-*") if (p / MARKER).exists())
    return complete[-1] if complete else None


def read_meta(ckpt: str | os.PathLike) -> dict:
    return json.loads((Path(ckpt) / "meta.json").read_text())
