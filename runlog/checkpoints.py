"""Atomic, verified, rotated checkpoints: write into a temporary folder, write the completion marker last, rename.

The marker (``COMPLETE``) holds the manifest: every file of the checkpoint with its size. A run killed with
SIGKILL at any instant leaves either a complete checkpoint or a temporary folder that ``latest_checkpoint``
ignores (and the next save sweeps away); a checkpoint damaged afterwards (a file deleted or cut short, a disk
that lost the tail of a write) fails its manifest, and ``latest_checkpoint`` falls back to the one before it.
Checkpoints written before manifests existed (a marker holding only the step) count as complete when their
marker and meta.json are there.

Folders are named ``step-000042`` (zero-padded to 6 digits, longer past a million steps); every ordering here
parses the number, never sorts the names.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

from runlog.atomic import fsync_dir, fsync_tree

MARKER = "COMPLETE"
_NAME = re.compile(r"step-(\d+)")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """``.../step-000042`` -> 42; None for a name that is not a checkpoint's."""
    m = _NAME.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def _by_step(root: Path) -> list[tuple[int, Path]]:
    """Checkpoint folders under ``root``, oldest step first."""
    if not root.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in root.iterdir() if p.is_dir()]
    return sorted((s, p) for s, p in found if s is not None)


def _manifest(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER}


def checkpoint_problem(ckpt: str | os.PathLike) -> str | None:
    """Why ``ckpt`` cannot be resumed from (no marker, a manifest file missing or of another size, unreadable
    meta.json), or None when it is complete."""
    p = Path(ckpt)
    try:
        marker = (p / MARKER).read_text()
    except OSError:
        return f"no {MARKER} marker"
    try:
        recorded = json.loads(marker)
    except ValueError:
        recorded = None
    files = recorded.get("files") if isinstance(recorded, dict) else None  # None: an old, step-only marker
    for name, size in (files or {}).items():
        f = p / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, the manifest says {size}"
    try:
        json.loads((p / "meta.json").read_text())
    except (OSError, ValueError) as e:
        return f"meta.json unreadable ({type(e).__name__})"
    return None


def save_checkpoint(ckpt_root: str | os.PathLike, step: int, write: Callable[[Path], None], meta: dict,
                    keep: int = 2) -> Path:
    """Create ``ckpt_root/step-XXXXXX``: ``write(tmp_dir)`` fills it, then ``meta.json``, then the marker with
    the manifest (each file's size), all fsynced before the rename that publishes it.

    Keeps the ``keep`` complete checkpoints with the highest steps (``keep <= 0`` keeps all). Damaged or
    incomplete checkpoint folders never count towards ``keep`` (so they cannot push out the last good one) and
    are removed once this newer complete one exists. Checkpoints of steps above ``step`` are from a run this one
    has replaced (it went on from an earlier state): they are removed, or a later resume would pick them.
    """
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, default=str))
    fsync_tree(tmp)
    with open(tmp / MARKER, "w") as f:
        f.write(json.dumps({"step": step, "files": _manifest(tmp)}))
        f.flush()
        os.fsync(f.fileno())
    if final.exists():  # the same step again (a resumed run redoing it): rename aside, then delete
        aside = root / f".tmp-old-{final.name}"
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(final, aside)
        os.rename(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_dir(root)

    good = []
    for s, p in _by_step(root):
        if p == final:
            good.append(p)
            continue
        problem = checkpoint_problem(p)
        if problem is not None:
            print(f"warning: removing incomplete checkpoint {p} ({problem}); {final.name} is complete",
                  file=sys.stderr, flush=True)
            shutil.rmtree(p, ignore_errors=True)
        elif s > step:
            print(f"warning: removing checkpoint {p}: its step is past {step}, the step this run just saved, so it "
                  "holds another state than this run's (a later resume would pick it)", file=sys.stderr, flush=True)
            shutil.rmtree(p, ignore_errors=True)
        else:
            good.append(p)
    for old in good[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or None. A damaged or incomplete one (see
    :func:`checkpoint_problem`) is skipped with a warning, falling back to the one before it."""
    for _, p in reversed(_by_step(Path(ckpt_root))):
        problem = checkpoint_problem(p)
        if problem is None:
            return p
        print(f"warning: checkpoint {p} is incomplete ({problem}); falling back to an earlier one",
              file=sys.stderr, flush=True)
    return None


def read_meta(ckpt: str | os.PathLike) -> dict:
    return json.loads((Path(ckpt) / "meta.json").read_text())
