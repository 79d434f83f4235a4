"""Atomic writes: a file or a folder appears whole under its final name, or not at all.

Each writes a temporary sibling (same folder, so the same file system), fsyncs it, and renames it over the final
name. A run killed at any instant leaves the old version or the new one, never a half-written one; leftovers are
hidden (``.tmp-*``) siblings that readers ignore.
"""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (the folder's entry list is what records it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename is still atomic there
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under ``root`` (what a writer like ``save_pretrained`` does not do)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def _sibling(final: Path, tag: str) -> Path:
    return final.parent / f".{tag}-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp sibling, fsync, rename over)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(final, "tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)
    return final


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_file(out) as tmp: fig.savefig(tmp)``: a writer that wants a path gets a temp sibling (same
    suffix, so format-by-extension still works), which replaces ``out`` when the block ends without error."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{_sibling(final, 'tmp').name}{final.suffix}"
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_dir(out) as tmp: save_adapter(model, tmp)``: fill a temp sibling folder; when the block ends
    without error it is fsynced and renamed to ``out`` (an older ``out`` is renamed aside first, then deleted).
    On error the temp folder is removed and an older ``out`` stays as it was.

    A folder cannot be renamed over a non-empty one, so there is an instant between the two renames when ``out``
    is missing; a kill there leaves the old version in a hidden ``.old-*`` sibling and the new one in ``.tmp-*``,
    never a mix of the two under ``out``.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(final, "tmp")
    tmp.mkdir()
    aside = None
    try:
        yield tmp
        fsync_tree(tmp)
        if final.exists() or final.is_symlink():
            aside = _sibling(final, "old")
            os.rename(final, aside)
        os.rename(tmp, final)
    except BaseException:
        if aside is not None and not final.exists():
            os.rename(aside, final)  # the second rename failed: put the old version back
            aside = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)
    if aside is not None:
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)
