"""Whether a run may write into runs_dir/run_name: never over another run unless told to, and a resume only
from a checkpoint that is really there.

Every pipeline calls :func:`prepare_run_dir` before it writes anything into its run folder.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from config import ConfigError
from runlog.checkpoints import latest_checkpoint


# What the pipelines write into a run folder: overwrite=true deletes only a folder holding one of these, so a
# mistyped runs_dir/run_name (the runs_dir itself, a source tree) is refused rather than deleted.
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoints", "tb", "data_report.json", "pairs.jsonl",
             "suites", "adapter", "adapters", "engine_base", "eval_base", "reward_model", "stages")


def run_dir_entries(run_dir: str | os.PathLike) -> list[str]:
    """What an earlier run left in ``run_dir`` (metrics.jsonl, checkpoints, summary.json, ...): the names of its
    entries, sorted; [] for a missing or empty folder."""
    p = Path(run_dir)
    return sorted(e.name for e in p.iterdir()) if p.is_dir() else []


def replace_run_dir(run_dir: str | os.PathLike) -> None:
    """Remove an earlier run's folder safely: rename it aside first (one atomic step, after which nothing of it
    is under ``run_dir``), then delete the renamed copy. A kill during the delete leaves only a hidden
    ``.<name>.replaced-*`` sibling, which the next call sweeps."""
    p = Path(run_dir)
    entries = run_dir_entries(p)
    if entries and (Path.cwd().resolve().is_relative_to(p.resolve()) or not set(entries) & set(RUN_FILES)):
        raise ConfigError(f"overwrite=true would delete {p.resolve()}, which is not one run's folder (it holds the "
                          f"working directory, or none of {', '.join(RUN_FILES)}); check runs_dir and run_name")
    for leftover in p.parent.glob(f".{p.name}.replaced-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if not p.exists():
        return
    aside = p.parent / f".{p.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    os.rename(p, aside)
    shutil.rmtree(aside, ignore_errors=True)


def refuse_reuse(run_dir: str | os.PathLike, entries: list[str]) -> ConfigError:
    """The error for a run folder that already holds another run, saying what to pass."""
    shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
    return ConfigError(f"run folder {run_dir} already holds a run ({shown}); pass resume=true to continue it, "
                       "overwrite=true to replace it, or choose another run_name")


def prepare_run_dir(run_dir: str | os.PathLike, resume: bool, overwrite: bool) -> Path | None:
    """Check ``run_dir`` (runs_dir/run_name) before a run writes into it; return the checkpoint to resume from.

    - neither flag: the folder must be missing or empty, else ``ConfigError`` (pass resume=true, overwrite=true,
      or another run_name) -- a new run never clobbers an old one's metrics or inherits its checkpoints;
    - ``overwrite=True``: the old run's files are removed (renamed aside, then deleted); returns None;
    - ``resume=True``: returns the latest complete checkpoint under ``run_dir/checkpoints`` (damaged ones are
      skipped with a warning, see :func:`runlog.latest_checkpoint`); ``ConfigError`` when there is none.
    """
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise ConfigError("resume=true and overwrite=true contradict each other: resume=true continues the run in "
                          f"{run_dir}, overwrite=true deletes it; pass one")
    if resume:
        ckpt = latest_checkpoint(run_dir / "checkpoints")
        if ckpt is None:
            raise ConfigError(f"resume=true but {run_dir / 'checkpoints'} holds no complete checkpoint to resume "
                              "from; drop resume=true and pass overwrite=true to start this run_name again, or "
                              "choose another run_name")
        return ckpt
    entries = run_dir_entries(run_dir)
    if entries and not overwrite:
        raise refuse_reuse(run_dir, entries)
    if entries:
        print(f"overwrite=true: removing the earlier run in {run_dir}", flush=True)
        replace_run_dir(run_dir)
    return None
