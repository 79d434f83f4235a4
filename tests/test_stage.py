"""pipelines/stage.py, the scaffolding every stage shares: the run folder, resuming only onto the same data, held-out
evaluation across a resume, checkpoints on schedule, the starting model. Real run folders, no cluster."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import config
from config import ConfigError
from pipelines.stage import Heldout, checkpoint, fingerprint, open_run, prepare_model, resume_from, run_log
from runlog import latest_checkpoint, read_metrics


def _cfg(tmp_path: Path, *extra: str):
    return config.load(config.Config, "tiny-cpu", [f"runs_dir={tmp_path}", "run_name=r", "tensorboard=false", *extra])


def test_resume_loads_a_checkpoint_of_the_same_rows_and_refuses_other_rows(tmp_path):
    cfg = _cfg(tmp_path, "checkpoint.every=2", "checkpoint.keep=5")
    run_dir, ckpt = open_run(cfg)
    assert run_dir.is_absolute() and run_dir == (tmp_path / "r").resolve() and ckpt is None
    loaded = []
    assert resume_from(None, "anything", loaded.append) == {"step": 0} and loaded == []
    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"}, {"prompt": "2+2=", "chosen": "4", "rejected": "5"}]
    data_id = fingerprint(rows)
    for step in (1, 2, 3, 4):  # every 2 steps, and never at the last (4): the stage's export follows it
        checkpoint(cfg, run_dir, step, 4, lambda tmp: (tmp / "state.txt").write_text("s"), {"data": data_id})
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000002"]

    cfg = _cfg(tmp_path, "resume=true")
    run_dir, ckpt = open_run(cfg)
    assert ckpt == latest_checkpoint(run_dir / "checkpoints")
    meta = resume_from(ckpt, fingerprint([dict(r) for r in rows]), loaded.append)
    assert meta["step"] == 2 and meta["run_name"] == "r" and loaded == [str(ckpt)]
    with pytest.raises(ConfigError, match="trained on other data than this run's"):
        resume_from(ckpt, fingerprint(rows[:1]), loaded.append)
    assert loaded == [str(ckpt)]  # refused before anything was loaded


def test_heldout_first_is_the_original_runs_step_0_after_a_resume(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir, _ = open_run(cfg)
    scores = iter([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    evaluate = lambda: {"accuracy": next(scores)}  # noqa: E731
    log = run_log(cfg, run_dir)
    ev = Heldout(log, evaluate, every=2, steps=5, start=0)
    for step in range(1, 4):
        log.log(step, {"train/loss": 1.0 / step})
        ev.after(step)
    log.close()
    assert ev.first == {"accuracy": 0.1} and ev.last == {"accuracy": 0.2}  # step 0, then step 2
    # Cut off after step 3; resumed from a step-2 checkpoint: rows after step 2 go, step 0's "before" stays.
    log = run_log(cfg, run_dir, start=2)
    ev = Heldout(log, evaluate, every=2, steps=5, start=2)
    assert ev.first == {"accuracy": 0.1} and ev.last == ev.first
    for step in (3, 4, 5):
        ev.after(step)
    log.close()
    assert ev.last == {"accuracy": 0.4}  # step 4 got 0.3, the last step (5) 0.4
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [(r["step"], r["heldout/accuracy"]) for r in rows if "heldout/accuracy" in r] == [
        (0, 0.1), (2, 0.2), (4, 0.3), (5, 0.4)]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
    assert json.loads((run_dir / "config.json").read_text())["run_name"] == "r"


def test_prepare_model_is_the_given_folder_or_the_tiny_model(tmp_path, cache_dir, tiny_model_dir):
    assert prepare_model(_cfg(tmp_path, f"model.path={tmp_path}")) == str(tmp_path)
    cfg = _cfg(tmp_path, f"cache_dir={cache_dir}", "model.preset=tiny", "data.warm_start_steps=0")
    assert Path(prepare_model(cfg)) == Path(tiny_model_dir)
    # SFT and eval take the bare model even when the RL and DPO stages would warm-start it.
    cfg = _cfg(tmp_path, f"cache_dir={cache_dir}", "model.preset=tiny", "data.warm_start_steps=50")
    assert Path(prepare_model(cfg, warm_start=False)) == Path(tiny_model_dir)
