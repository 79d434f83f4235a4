"""pipelines/course.py end to end on CPU with a tiny budget: SFT -> DPO -> GRPO -> a continual stage, each stage a
Ray job (job API) on the course's own local cluster, all in one reserved placement group, each stage's output the
next one's input, and the panel's table; killed and resumed."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from config import Config, ConfigError, load

REPO = Path(__file__).resolve().parents[1]


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


ARGV = ["run_name=course", "model.preset=tiny", "data.warm_start_steps=0",
        "tensorboard=false", "progress=false", "eval.suites=[heldout]", "eval.limit=8",
        "sft:sft.steps=4", "sft:sft.mix_total=64", "sft:sft.eval_every=0",
        "dpo:train.steps=3", "dpo:dpo.builtin_prompts=32", "dpo:dpo.batch_size=8",
        "grpo:train.steps=2", "grpo:train.prompts_per_step=2", "grpo:rollout.n_samples=2",
        "grpo:train.heldout_prompts=4", "grpo:data.builtin_size=64",
        "continual:continual.train_size=16", "continual:continual.test_size=8", "continual:continual.epochs=1"]


def _course(tmp_path, *extra, timeout=900):
    """``python pipelines/course.py`` as a user runs it (its own local cluster, dashboard and job server)."""
    import subprocess
    import sys

    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO / "pipelines" / "course.py"), f"runs_dir={tmp_path}", *ARGV, *extra],
                          cwd=str(REPO), capture_output=True, text=True, timeout=timeout, env=env)


def _reservations(address: str) -> str:
    """What the documented command lists: the live reservations on the cluster at ``address``."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "cluster.reservation", "list", f"cluster.address={address}"], cwd=str(REPO),
                       capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""})
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_course_runs_every_stage_as_a_ray_job_in_one_reservation_killed_and_resumed(tmp_path):
    """On a running cluster (a head started here, as `ray start` would): the course killed outright (SIGKILL) while
    its SFT job runs leaves the detached reservation (and the job) on the cluster; ``resume=true`` stops the left-
    over job, reattaches to the same reservation and finishes; after it nothing stays reserved. Every stage ran as a
    Ray job (ids in summary.json) whose actors all lay in that one reservation. Then, with the course's own local
    cluster (cluster.address=local): a stage job that fails is named with its id, log and rerun command, and
    resuming after it reuses the finished stages and runs only the one that failed."""
    import signal
    import subprocess
    import sys
    import time

    from cluster.connect import LocalHead

    course = tmp_path / "course"
    head = LocalHead(num_cpus=2, num_gpus=0)
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONUNBUFFERED": "1"}
    try:
        log = open(tmp_path / "killed.log", "w")
        p = subprocess.Popen([sys.executable, str(REPO / "pipelines" / "course.py"), f"runs_dir={tmp_path}", *ARGV,
                              f"cluster.address={head.address}"], cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT,
                             env=env)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and p.poll() is None:
                jobs = json.loads((course / "jobs.json").read_text()) if (course / "jobs.json").exists() else {}
                if jobs.get("sft", {}).get("status") == "RUNNING":
                    break
                time.sleep(0.2)
            assert p.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert jobs.get("sft", {}).get("status") == "RUNNING", "the SFT job never ran"
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
            log.close()
        killed = json.loads((course / "reservation.json").read_text())
        assert killed["id"] in _reservations(head.address)  # detached: it outlived the course that made it

        r = _course(tmp_path, "resume=true", f"cluster.address={head.address}")
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        assert f"[course] stopping sft's job {jobs['sft']['job_id']}, left running by an earlier attempt" in r.stdout
        assert "(reattached)" in r.stdout and "[course] reservation 'course-course' released" in r.stdout
        assert "course-course" not in _reservations(head.address)  # nothing stays reserved
    finally:
        head.stop()
    s = json.loads((course / "summary.json").read_text())
    header = (course / "comparison.md").read_text().splitlines()[0]
    assert [c.strip() for c in header.split("|")[2:7]] == ["base", "sft", "dpo", "grpo", "continual"]
    assert all(math.isfinite(st["metrics"]["heldout/perplexity"]) for st in s["stages"].values())

    # One placement group from the first stage to the last -- the one the killed attempt reserved: every actor of
    # every stage job lay in it.
    res = s["reservation"]
    assert res["id"] == killed["id"] and res["reattached"] and res["owned"]
    assert res["name"] == "course-course" and res["bundles"] == [{"CPU": 1.25}]
    for stage in ("sft", "dpo", "grpo", "continual"):
        job = s["jobs"][stage]
        assert job["status"] == "SUCCEEDED" and job["job_id"].startswith("raysubmit_"), job
        assert job["actors"] >= 1 and job["placement_groups"] == [res["id"]], (stage, job)
        assert "cluster.reservation=course-course" in job["entrypoint"]
        assert (course / "jobs" / f"{stage}.log").stat().st_size > 0
    assert s["jobs"]["sft"]["job_id"] != jobs["sft"]["job_id"]  # the cut-off SFT ran again, as a new job

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

    # Cut off during the continual stage (before its summary), then resumed with a continual stage that fails at
    # start: the course names the failed job, its log and how to rerun it, and releases the reservation.
    sft_metrics = (course / "sft" / "metrics.jsonl").read_text()
    (course / "continual" / "summary.json").unlink()
    bad = _course(tmp_path, "resume=true", "continual:model.path=/nonexistent/model")
    assert bad.returncode != 0
    assert "run stopped: stage continual failed: Ray job raysubmit_" in bad.stderr, bad.stderr[-3000:]
    assert "/nonexistent/model" in bad.stderr and "ray job logs raysubmit_" in bad.stderr
    assert "Re-run the stage alone" in bad.stderr and "pipelines/continual.py" in bad.stderr
    assert "[course] reservation 'course-course' released" in bad.stdout
    own = json.loads((course / "reservation.json").read_text())  # the course's own head this time, gone with it
    assert own["gcs_address"] != killed["gcs_address"] and not Path(own["session_dir"]).exists()

    # Resumed again: the three finished stages are reused (not run again), the continual stage starts again over
    # what it left, and the table is rebuilt.
    r2 = _course(tmp_path, "resume=true")
    assert r2.returncode == 0, r2.stdout[-4000:] + r2.stderr[-4000:]
    out = r2.stdout
    assert all(f"[course] {stage}: finished in an earlier attempt" in out for stage in ("sft", "dpo", "grpo"))
    ran = [line for line in out.splitlines() if line.startswith("[course] $ ")]
    assert len(ran) == 1 and "pipelines/continual.py overwrite=true " in ran[0], ran  # the only stage run again
    s2 = json.loads((course / "summary.json").read_text())
    assert (course / "sft" / "metrics.jsonl").read_text() == sft_metrics
    assert s2["sft_heldout_loss"] == s["sft_heldout_loss"] and s2["grpo_heldout_reward"] == s["grpo_heldout_reward"]
    assert (course / "continual" / "summary.json").exists() and s2["stages"]["continual"]["method"] == "inscl"
    assert s2["jobs"]["continual"]["placement_groups"] == [s2["reservation"]["id"]]


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
    """How each stage of a resumed course starts (run_stage): a finished stage (summary.json) is not run again; one
    with a complete checkpoint gets resume=true; one cut off before any checkpoint gets overwrite=true."""
    from pipelines.course import stage_flags
    from runlog import save_checkpoint

    done = tmp_path / "sft"
    done.mkdir()
    (done / "summary.json").write_text(json.dumps({"adapter": "x"}))
    assert stage_flags(done, resume=True) is None
    cut = tmp_path / "dpo"
    save_checkpoint(cut / "checkpoints", 2, lambda d: (d / "state.pt").write_text("s"), {})
    assert stage_flags(cut, resume=True) == ["resume=true"]
    early = tmp_path / "rm"
    early.mkdir()
    (early / "metrics.jsonl").write_text('{"step": 0}\n')
    assert stage_flags(early, resume=True) == ["overwrite=true"]
    assert stage_flags(tmp_path / "new", resume=True) == [] and stage_flags(early, resume=False) == []


def test_reservation_holds_the_most_any_stage_asks():
    """The run's reservation, bundle by bundle, is the most that any stage's plan asks: in colocate mode one bundle
    of every role's share (on the 4080 config: one GPU), in split mode a bundle per role at its largest."""
    from pipelines.course import reservation_bundles

    cpu = [load(Config, "tiny-cpu", a) for a in ([], ["cluster.learner.num_cpus=1"])]
    assert reservation_bundles(cpu) == ([{"CPU": 1.75}], "STRICT_PACK")
    gpu = [load(Config, "rtx4080")] * 2
    (b,), strategy = reservation_bundles(gpu)
    assert 0 < b["GPU"] <= 1.0 and strategy == "STRICT_PACK"  # the roles share the one card
    split = [load(Config, "tiny-cpu", ["cluster.mode=split"] + a) for a in ([], ["cluster.reward.num_cpus=0.5"])]
    assert reservation_bundles(split) == ([{"CPU": 0.5}, {"CPU": 0.5}, {"CPU": 0.5}], "PACK")
