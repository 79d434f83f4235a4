"""pipelines/course.py end to end on CPU with a tiny budget: SFT -> DPO -> GRPO -> a continual stage, each stage a
Ray job of its own on the test's cluster, each stage's output the next one's input, and the panel's table."""
from __future__ import annotations

import json
import math

import pytest

from config import ConfigError


def test_stage_overrides_are_routed_and_checked():
    from pipelines.course import split_overrides

    common, per = split_overrides(["train.lr=1e-4", "dpo:train.steps=3", "grpo:rollout.n_samples=2"])
    assert common == ["train.lr=1e-4"] and per["dpo"] == ["train.steps=3"] and per["sft"] == []
    with pytest.raises(ConfigError, match="not a stage"):
        split_overrides(["ppo:train.steps=3"])


def test_merged_model_is_remade_when_the_adapter_changes(tiny_model_dir, tmp_path):
    """A rerun under the same run_name trains new adapters; the merged model the next stage starts from must be
    theirs, not the one a previous run left in models/ (that is how the continual stage once started from a stale
    RL model). The same base and adapter reuse it."""
    from safetensors.torch import load_file

    from pipelines.course import merge_adapter
    from tests.test_models import _saved_adapter

    out = tmp_path / "models" / "grpo"
    first, _ = _saved_adapter(tiny_model_dir, tmp_path / "a1", 1)
    merge_adapter(str(tiny_model_dir), str(first), out)
    w1 = load_file(str(out / "model.safetensors"))
    second, _ = _saved_adapter(tiny_model_dir, tmp_path / "a2", 2)
    merge_adapter(str(tiny_model_dir), str(second), out)
    w2 = load_file(str(out / "model.safetensors"))
    assert any(not (w1[k] == w2[k]).all() for k in w1)  # remade from the new adapter
    made = (out / "model.safetensors").stat().st_mtime_ns
    merge_adapter(str(tiny_model_dir), str(second), out)
    assert (out / "model.safetensors").stat().st_mtime_ns == made  # same sources: reused


def test_course_runs_every_stage_and_tables_them(ray_local, tmp_path, capfd):
    from pipelines.course import main

    argv = [f"runs_dir={tmp_path}", "run_name=course", "model.preset=tiny", "data.warm_start_steps=0",
            "tensorboard=false", "progress=false", "eval.suites=[heldout]", "eval.limit=8",
            "sft:sft.steps=4", "sft:sft.mix_total=64", "sft:sft.eval_every=0",
            "dpo:train.steps=3", "dpo:dpo.builtin_prompts=32", "dpo:dpo.batch_size=8",
            "grpo:train.steps=2", "grpo:train.prompts_per_step=2", "grpo:rollout.n_samples=2",
            "grpo:train.heldout_prompts=4", "grpo:data.builtin_size=64",
            "continual:continual.train_size=16", "continual:continual.test_size=8", "continual:continual.epochs=1"]
    s = main(argv)
    course = tmp_path / "course"
    header = (course / "comparison.md").read_text().splitlines()[0]
    assert [c.strip() for c in header.split("|")[2:7]] == ["base", "sft", "dpo", "grpo", "continual"]
    assert all(math.isfinite(st["metrics"]["heldout/perplexity"]) for st in s["stages"].values())

    def stage_cfg(name):
        return json.loads((course / name / "config.json").read_text())

    st = s["stages"]
    assert stage_cfg("dpo")["dpo"]["sft_adapter"] == st["sft"]["adapter"]  # DPO starts from SFT, SFT is its reference
    grpo = stage_cfg("grpo")["model"]  # RL trains from the DPO adapter on the base; the SFT adapter is its reference
    assert grpo["adapter"] == st["dpo"]["adapter"] and grpo["reference_adapter"] == st["sft"]["adapter"]
    assert grpo["path"] == st["base"]["model"]
    cont = stage_cfg("continual")
    assert cont["model"]["path"] == str(course / "models" / "grpo")
    assert cont["continual"]["memory"] == list(stage_cfg("sft")["sft"]["sources"])  # the SFT data is replayed
    assert st["continual"]["method"] == "inscl" and st["continual"]["tasks"] == ["reverse"]

    # Resumed as if cut off during the continual stage (before its summary): the three finished stages are reused
    # (not run again), the continual stage starts again over what it left, and the table is rebuilt.
    sft_metrics = (course / "sft" / "metrics.jsonl").read_text()
    (course / "continual" / "summary.json").unlink()
    capfd.readouterr()
    s2 = main(argv + ["resume=true"])
    out = capfd.readouterr().out
    assert all(f"[course] {stage}: finished in an earlier attempt" in out for stage in ("sft", "dpo", "grpo"))
    ran = [line for line in out.splitlines() if line.startswith("[course] $ ")]
    assert len(ran) == 1 and "pipelines/continual.py overwrite=true " in ran[0], ran  # the only stage run again
    assert (course / "sft" / "metrics.jsonl").read_text() == sft_metrics
    assert s2["sft_heldout_loss"] == s["sft_heldout_loss"] and s2["grpo_heldout_reward"] == s["grpo_heldout_reward"]
    assert (course / "continual" / "summary.json").exists() and s2["stages"]["continual"]["method"] == "inscl"


def test_rerunning_a_course_is_refused_unless_resumed_or_overwritten(tmp_path):
    """The course folder holds every stage's run: reusing it needs resume=true or overwrite=true (checked before
    any cluster starts), and resume=true needs an earlier course to go on with."""
    from pipelines.course import main

    args = [f"runs_dir={tmp_path}", "run_name=course", "model.preset=tiny", "progress=false"]
    with pytest.raises(ConfigError, match="holds no earlier course"):
        main(args + ["resume=true"])
    (tmp_path / "course" / "sft").mkdir(parents=True)
    (tmp_path / "course" / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"already holds a run \(sft, summary.json\); pass resume=true .* "
                                          "overwrite=true .* another run_name"):
        main(args)
    with pytest.raises(ConfigError, match="contradict"):
        main(args + ["resume=true", "overwrite=true"])
    assert sorted(p.name for p in (tmp_path / "course").iterdir()) == ["sft", "summary.json"]  # untouched


def test_resumed_course_reuses_finished_stages_and_resumes_cut_off_ones(tmp_path):
    """How run_stage starts each stage of a resumed course: a finished stage (summary.json) is not run again; one
    with a complete checkpoint gets resume=true; one cut off before any checkpoint gets overwrite=true. The last
    two run the real script, here with a model path that fails at once, and the failure names the command."""
    import os

    from pipelines.course import run_stage
    from runlog import save_checkpoint

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = tmp_path / "sft"
    done.mkdir()
    (done / "summary.json").write_text(json.dumps({"adapter": "x"}))
    assert run_stage("sft.py", ["model.path=/nonexistent/model"], done, env, resume=True) == {"adapter": "x"}

    cut = tmp_path / "dpo"
    save_checkpoint(cut / "checkpoints", 2, lambda d: (d / "state.pt").write_text("s"), {})
    with pytest.raises(RuntimeError, match=r"dpo.py resume=true runs_dir="):
        run_stage("dpo.py", [f"runs_dir={tmp_path}", "run_name=dpo", "model.path=/nonexistent/model"], cut, env, True)

    early = tmp_path / "rm"
    early.mkdir()
    (early / "metrics.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(RuntimeError, match=r"rm.py overwrite=true runs_dir="):
        run_stage("rm.py", [f"runs_dir={tmp_path}", "run_name=rm", "model.path=/nonexistent/model"], early, env, True)
