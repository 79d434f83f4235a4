"""runlog/: run folders are never clobbered, checkpoints rotate by step and survive damage, metrics survive a torn
last line, and every file a run writes appears whole or not at all. Real files in tmp_path; the last test runs
pipelines/sft.py on the tiny model."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from config import ConfigError
from runlog import (RunLog, atomic_dir, atomic_write_text, checkpoint_problem, checkpoint_step, latest_checkpoint,
                    prepare_run_dir, read_metrics, save_checkpoint)
from runlog.checkpoints import MARKER, read_meta

REPO = Path(__file__).resolve().parents[1]


def _write(payload: str):
    def write(tmp: Path) -> None:
        (tmp / "state.bin").write_text(payload)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(payload.encode() * 10)
    return write


def _steps(root: Path) -> list[int]:
    return sorted(checkpoint_step(p) for p in root.iterdir() if checkpoint_step(p) is not None)


# --- checkpoints ---------------------------------------------------------------------------------------------------

def test_rotation_orders_by_step_number_past_six_digits(tmp_path):
    root = tmp_path / "ckpt"
    for step in (999_998, 999_999, 1_000_000, 1_000_001):  # names sort "step-1000000" < "step-999998"
        save_checkpoint(root, step, _write(str(step)), {}, keep=2)
    assert _steps(root) == [1_000_000, 1_000_001]
    latest = latest_checkpoint(root)
    assert latest.name == "step-1000001" and read_meta(latest)["step"] == 1_000_001
    assert (latest / "state.bin").read_text() == "1000001"
    assert checkpoint_step(root / "step-000042") == 42 and checkpoint_step(root / ".tmp-step-000042") is None


def test_manifest_records_every_file_and_its_size(tmp_path):
    ck = save_checkpoint(tmp_path, 3, _write("abc"), {"note": "x"})
    files = json.loads((ck / MARKER).read_text())["files"]
    assert files == {"meta.json": (ck / "meta.json").stat().st_size, "state.bin": 3, "sub/weights.bin": 30}
    assert checkpoint_problem(ck) is None
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("damage,reason", [
    (lambda ck: (ck / "sub" / "weights.bin").unlink(), "sub/weights.bin is missing"),
    (lambda ck: (ck / "state.bin").write_text("a"), "state.bin has 1 bytes, the manifest says 4"),
    (lambda ck: (ck / MARKER).unlink(), "no COMPLETE marker"),
])
def test_damaged_latest_falls_back_to_previous_complete_one(tmp_path, capsys, damage, reason):
    save_checkpoint(tmp_path, 4, _write("four"), {})
    ck6 = save_checkpoint(tmp_path, 6, _write("six!"), {})
    damage(ck6)
    assert checkpoint_problem(ck6) == reason
    assert latest_checkpoint(tmp_path).name == "step-000004"
    err = capsys.readouterr().err
    assert "step-000006 is incomplete" in err and reason in err


def test_damaged_checkpoints_never_push_out_the_last_good_one(tmp_path):
    save_checkpoint(tmp_path, 2, _write("two"), {}, keep=1)
    save_checkpoint(tmp_path, 4, _write("four"), {}, keep=1)
    (tmp_path / "step-000004" / "state.bin").unlink()
    assert _steps(tmp_path) == [4]  # keep=1 already removed step 2: the damaged 4 is all there is
    assert latest_checkpoint(tmp_path) is None
    # A resumed run redoes step 4 into the damaged folder's name, then goes on; damaged ones never count as kept.
    save_checkpoint(tmp_path, 4, _write("four"), {}, keep=2)
    assert checkpoint_problem(tmp_path / "step-000004") is None
    save_checkpoint(tmp_path, 6, _write("six"), {}, keep=2)
    (tmp_path / "step-000006" / "sub" / "weights.bin").unlink()
    save_checkpoint(tmp_path, 8, _write("eight"), {}, keep=2)  # the damaged 6 is swept and does not push out 4
    assert _steps(tmp_path) == [4, 8]


def test_checkpoints_past_the_saved_step_are_removed(tmp_path, capsys):
    """A run that went on from an earlier state must not leave a later resume to pick another run's checkpoint."""
    save_checkpoint(tmp_path, 10, _write("old"), {})
    save_checkpoint(tmp_path, 2, _write("new"), {})
    assert _steps(tmp_path) == [2] and latest_checkpoint(tmp_path).name == "step-000002"
    assert "past 2" in capsys.readouterr().err


def test_old_checkpoints_without_a_manifest_still_load(tmp_path):
    ck = tmp_path / "step-000005"
    ck.mkdir()
    (ck / "state.bin").write_text("x")
    (ck / "meta.json").write_text(json.dumps({"step": 5}))
    (ck / MARKER).write_text("5")  # what save_checkpoint wrote before manifests
    assert checkpoint_problem(ck) is None and latest_checkpoint(tmp_path) == ck
    (ck / "meta.json").unlink()
    assert "meta.json" in checkpoint_problem(ck) and latest_checkpoint(tmp_path) is None


def test_failed_write_leaves_no_checkpoint_and_the_next_save_sweeps_it(tmp_path):
    def broken(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise OSError("disk full")

    save_checkpoint(tmp_path, 1, _write("one"), {})
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, broken, {})
    assert latest_checkpoint(tmp_path).name == "step-000001" and list(tmp_path.glob(".tmp-*"))
    save_checkpoint(tmp_path, 2, _write("two"), {})
    assert not list(tmp_path.glob(".tmp-*")) and _steps(tmp_path) == [1, 2]


# --- metrics -------------------------------------------------------------------------------------------------------

def test_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, capsys):
    log = RunLog(tmp_path, tensorboard=False)
    for step in range(4):
        log.log(step, {"loss": 1.0 / (step + 1)})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.2, "ti')  # a kill mid-append
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3]
    assert "dropped its last line" in capsys.readouterr().err
    # Resuming at step 3 keeps steps 0-2, drops the torn line, and the file is whole again for appends.
    log = RunLog(tmp_path, tensorboard=False, start_step=3)
    log.log(3, {"loss": 0.3})
    log.close()
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]
    assert not list(tmp_path.glob(".tmp-*"))


def test_summary_config_and_plot_are_written_whole(tmp_path):
    log = RunLog(tmp_path, tensorboard=False, config={"a": 1})
    log.log(1, {"loss": 2.0})
    log.log(2, {"loss": 1.0})
    assert json.loads((tmp_path / "config.json").read_text()) == {"a": 1}
    assert json.loads(log.summary({"x": float("nan"), "y": 3}).read_text()) == {"x": None, "y": 3}
    png = log.plot(["loss"], "curves.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "curves.png", "metrics.jsonl", "summary.json"]


# --- atomic writes -------------------------------------------------------------------------------------------------

def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path):
    out = tmp_path / "adapter"
    with atomic_dir(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".tmp-") and not out.exists()
        (tmp / "adapter_model.safetensors").write_bytes(b"v1")
    assert (out / "adapter_model.safetensors").read_bytes() == b"v1"
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_dir(out) as tmp:
            (tmp / "adapter_model.safetensors").write_bytes(b"v2-half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_model.safetensors"]
    assert (out / "adapter_model.safetensors").read_bytes() == b"v1"  # the failed export changed nothing
    with atomic_dir(out) as tmp:
        (tmp / "adapter_config.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json"]  # replaced, not merged into
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temp or old copy left


def test_atomic_write_text_replaces_and_leaves_nothing_else(tmp_path):
    p = tmp_path / "summary.json"
    p.write_text("old")
    atomic_write_text(p, "new")
    assert p.read_text() == "new" and [q.name for q in tmp_path.iterdir()] == ["summary.json"]


# --- run folders ---------------------------------------------------------------------------------------------------

def test_prepare_run_dir_refuses_reuse_and_replaces_or_resumes(tmp_path):
    run = tmp_path / "r"
    assert prepare_run_dir(run, resume=False, overwrite=False) is None  # new: nothing to check
    run.mkdir()
    assert prepare_run_dir(run, resume=False, overwrite=False) is None  # empty: still new
    (run / "metrics.jsonl").write_text('{"step": 0}\n')
    save_checkpoint(run / "checkpoints", 3, _write("x"), {})
    with pytest.raises(ConfigError, match="already holds a run .*resume=true to continue it, overwrite=true to "
                                          "replace it, or choose another run_name"):
        prepare_run_dir(run, resume=False, overwrite=False)
    assert prepare_run_dir(run, resume=True, overwrite=False) == run / "checkpoints" / "step-000003"
    with pytest.raises(ConfigError, match="contradict"):
        prepare_run_dir(run, resume=True, overwrite=True)
    assert prepare_run_dir(run, resume=False, overwrite=True) is None
    assert not run.exists() and list(tmp_path.iterdir()) == []  # removed, no renamed copy left behind
    with pytest.raises(ConfigError, match=f"resume=true but {run / 'checkpoints'} holds no complete checkpoint"):
        prepare_run_dir(run, resume=True, overwrite=False)


def test_overwrite_refuses_to_delete_what_is_not_one_run(tmp_path, monkeypatch):
    """A mistyped runs_dir/run_name (run_name=. is the runs_dir itself; a folder above the working directory)."""
    runs = tmp_path / "work" / "runs"
    (runs / "a").mkdir(parents=True)
    (runs / "a" / "metrics.jsonl").write_text("")
    (tmp_path / "work" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path / "work")
    for folder in (runs / ".", tmp_path / "work", tmp_path):
        with pytest.raises(ConfigError, match="not one run's folder"):
            prepare_run_dir(folder, resume=False, overwrite=True)
    assert (runs / "a" / "metrics.jsonl").exists()
    assert prepare_run_dir(runs / "a", resume=False, overwrite=True) is None and not (runs / "a").exists()


# --- the real pipeline ---------------------------------------------------------------------------------------------

def _sft():
    spec = importlib.util.spec_from_file_location("sft_pipeline_runlog", REPO / "pipelines" / "sft.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sft_args(runs: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [f"runs_dir={runs}", f"cache_dir={cache_dir}", "run_name=r", "model.preset=tiny", "model.finetune=lora",
            "sft.steps=4", "sft.micro_batch_rows=4", "sft.grad_accum=1", "sft.eval_every=0", "sft.max_seq_len=128",
            "sft.mix_total=64", "checkpoint.every=2", "checkpoint.keep=3", "tensorboard=false", "progress=false",
            *extra]


def test_sft_run_folder_is_refused_replaced_and_resumed_past_damage(ray_local, cache_dir, tmp_path, capfd):
    sft = _sft()
    run = tmp_path / "r"
    with pytest.raises(ConfigError, match="holds no complete checkpoint"):
        sft.main(_sft_args(tmp_path, cache_dir, "resume=true"))
    first = sft.main(_sft_args(tmp_path, cache_dir))
    assert _steps(run / "checkpoints") == [2, 4]
    first_rows = {r["step"]: r for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r}

    with pytest.raises(ConfigError, match="already holds a run .*overwrite=true"):
        sft.main(_sft_args(tmp_path, cache_dir, "sft.steps=2"))
    assert len(read_metrics(run / "metrics.jsonl")) == 5  # the refused run touched nothing

    # Torn state: the last checkpoint lost a file, and metrics.jsonl ends in half a row.
    (run / "checkpoints" / "step-000004" / "trainer_state.pt").unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/lo')
    capfd.readouterr()
    resumed = sft.main(_sft_args(tmp_path, cache_dir, "resume=true"))
    out = capfd.readouterr()
    assert "step-000004 is incomplete (trainer_state.pt is missing); falling back" in out.err
    assert "resuming from" in out.out and "step-000002 at step 2" in out.out
    rows = {r["step"]: r for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r}
    assert sorted(rows) == [1, 2, 3, 4]  # steps 3-4 redone from step 2, once each
    assert rows[2]["time"] == first_rows[2]["time"] and rows[3]["time"] > first_rows[4]["time"]
    assert rows[4]["train/loss"] == pytest.approx(first_rows[4]["train/loss"], abs=1e-4)
    assert all(json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines())  # the torn row is gone
    assert checkpoint_problem(run / "checkpoints" / "step-000004") is None  # the redone step 4 is complete
    assert resumed["heldout_loss_start"] == first["heldout_loss_start"]
    assert resumed["heldout_loss_end"] == pytest.approx(first["heldout_loss_end"], abs=1e-4)

    replaced = sft.main(_sft_args(tmp_path, cache_dir, "overwrite=true", "sft.steps=2"))
    assert replaced["steps"] == 2 and _steps(run / "checkpoints") == [2]  # nothing of the old run is left
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [0, 1, 2]
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
