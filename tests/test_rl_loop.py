"""The shared RL loop (pipelines/rl_loop.py) on the real stack: asynchronous rollout with bounded staleness and its
resume, failed reward items masked (and a step of mostly failed items stopped), a reused run name refused, and
faults injected into a running job: a reward actor killed with SIGKILL is survived, a rollout engine stopped with
SIGSTOP ends the run with an error naming the role within its deadline."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config import Config, load

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.preset=tiny", "data.warm_start_steps=0", "train.heldout_prompts=4", "rollout.n_samples=4",
        "train.prompts_per_step=4", "rollout.max_new_tokens=8", "progress=false", "tensorboard=false"]


def _grpo(tmp_path, name, *extra, timeout=600):
    cmd = [sys.executable, str(REPO / "pipelines" / "grpo.py"), *TINY, f"runs_dir={tmp_path}", f"run_name={name}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- pure parts -------------------------------------------------------------------------------------------------------
def test_mask_failed_leaves_unjudged_items_out_and_stops_past_the_fraction():
    from pipelines.rl_loop import RunError, mask_failed

    cfg = load(Config, "tiny-cpu", ["reward.max_failed_frac=0.5"])
    sc = {"valid": [True, False, True, True, False, False, True, True], "failures": {"exact_answer:error": 3}}
    keep, m = mask_failed(sc, 4, cfg, 0, min_group=2)
    assert keep == [0, 2, 3, 6, 7] and m == {"reward/failed_items": 3, "reward/masked_items": 3}
    keep, _ = mask_failed({**sc, "valid": [True, False, False, False, True, True, True, True]}, 4, cfg, 0, min_group=2)
    assert keep == [4, 5, 6, 7]  # a group left with one judged sample has no baseline: dropped whole
    with pytest.raises(RunError, match="exact_answer gave status 'error' on 5.*reward.max_failed_frac=0.5"):
        mask_failed({"valid": [False] * 5 + [True] * 3, "failures": {"exact_answer:error": 5}}, 4, cfg, 3)


# -- asynchronous rollout ------------------------------------------------------------------------------------------
def test_async_rollout_bound_holds_a_reused_name_is_refused_and_resume_continues(tmp_path):
    run = tmp_path / "async"
    out = _grpo(tmp_path, "async", "train.steps=5", "train.max_staleness=2", "checkpoint.every=2")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rows = _rows(run)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert all(0 <= r["rollout/staleness_max"] <= 2 for r in rows)  # never past train.max_staleness
    # the engine really ran ahead: from step 2 on the batches were sampled two versions back (launched after the
    # sync of version s - 2, generated while the learner trained on s - 2 and s - 1)
    assert [r["rollout/staleness_max"] for r in rows] == [0, 1, 2, 2, 2]
    assert [r["rollout/adapter_version"] for r in rows] == [0, 0, 0, 1, 2]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["max_staleness"] == 2 and set(summary["staleness_histogram"]) == {"0", "1", "2"}
    # the stale samples went through the off-policy correction (its weights are logged every step)
    assert all("rollout_corr/is_weight_mean" in r for r in rows)

    again = _grpo(tmp_path, "async", "train.steps=5", timeout=120)
    assert again.returncode == 1 and "resume=true" in again.stderr.strip().splitlines()[-1], again.stderr[-2000:]
    assert [r["step"] for r in _rows(run)] == [0, 1, 2, 3, 4]  # the refused start touched nothing

    more = _grpo(tmp_path, "async", "train.steps=7", "train.max_staleness=2", "checkpoint.every=2", "resume=true")
    assert more.returncode == 0, more.stdout[-2000:] + more.stderr[-3000:]
    assert "resumed from" in more.stdout and "at step 5" in more.stdout
    rows = _rows(run)
    assert [r["step"] for r in rows] == list(range(7))
    # batches in flight at the checkpoint were regenerated under the resumed weights: lag 0, then the bound again
    assert [r["rollout/staleness_max"] for r in rows[5:]] == [0, 1]


# -- reward items that cannot be judged --------------------------------------------------------------------------
def _prompts(path: Path, answers) -> str:
    with open(path, "w") as f:
        for i, a in enumerate(answers):
            f.write(json.dumps({"prompt": f"What is {i}+1? Answer as JSON.", "answer": a}) + "\n")
    return str(path)


def test_items_no_scorer_judged_are_masked_and_a_mostly_failed_step_stops(tmp_path):
    # every third row has no reference answer: exact_answer cannot judge its items (status error, score None)
    data = _prompts(tmp_path / "some.jsonl", [None if i % 3 == 0 else i + 1 for i in range(24)])
    out = _grpo(tmp_path, "masked", "train.steps=3", f"data.train={data}", "checkpoint.every=0", "reward.max_failed_frac=0.9")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rows = _rows(tmp_path / "masked")
    assert sum(r["reward/failed_items"] for r in rows) > 0
    assert all(r["reward/masked_items"] >= r["reward/failed_items"] for r in rows)
    assert all(r.get("reward/failed/exact_answer:error", 0) == r["reward/failed_items"] for r in rows)

    none = _prompts(tmp_path / "none.jsonl", [None] * 24)
    out = _grpo(tmp_path, "failing", "train.steps=2", f"data.train={none}", "checkpoint.every=0")
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and last.startswith("run stopped: step 0:"), out.stderr[-3000:]
    assert "exact_answer gave status 'error'" in last and "reward.max_failed_frac" in last
    assert not (tmp_path / "failing" / "metrics.jsonl").exists() or not _rows(tmp_path / "failing")


def test_streamed_reference_logprobs_reach_the_learner_and_a_plan_where_they_do_not_apply_is_refused(tmp_path):
    """train.reference_logprobs=stream (actors/reference.py): every trained sample carries the scorer's reference
    logprobs (reference/streamed_frac 1) and the learner's own pass is skipped; the samples are the learner mode's
    (same seeds: same rewards); an asynchronous plan is refused before anything starts, naming the key."""
    out = _grpo(tmp_path, "stream", "train.steps=2", "checkpoint.every=0", "train.reference_logprobs=stream")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rows = _rows(tmp_path / "stream")
    assert [r["reference/streamed_frac"] for r in rows] == [1.0, 1.0]
    conf = json.loads((tmp_path / "stream" / "config.json").read_text())
    assert conf["resolved"]["reference_logprobs"] == "stream"
    out = _grpo(tmp_path, "learner", "train.steps=1", "checkpoint.every=0")
    assert out.returncode == 0, out.stderr[-3000:]
    plain = _rows(tmp_path / "learner")
    assert plain[0]["reference/streamed_frac"] == 0.0
    assert plain[0]["reward/mean"] == rows[0]["reward/mean"]
    assert abs(rows[0]["actor/kl_loss"]) < 1.0 and abs(plain[0]["actor/kl_loss"]) < 1.0

    bad = _grpo(tmp_path, "bad", "train.steps=1", "train.reference_logprobs=stream", "train.max_staleness=1")
    assert bad.returncode != 0 and "train.reference_logprobs=stream does not apply with train.max_staleness=1" in bad.stderr
    assert not (tmp_path / "bad").exists()


# -- faults injected into a running job ----------------------------------------------------------------------------
def _descendants(pid: int):
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _wait_for_step(run: Path, step: int, proc, deadline: float, log: Path) -> None:
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        if (run / "metrics.jsonl").exists() and any(r["step"] >= step for r in _rows(run)):
            return
        time.sleep(0.5)
    raise AssertionError(f"step {step} not logged in time: " + log.read_text()[-3000:])


def test_a_killed_reward_actor_is_survived_and_a_stopped_engine_ends_the_run_in_time(tmp_path):
    run = tmp_path / "faults"
    timeout_s = 60
    cmd = [sys.executable, str(REPO / "pipelines" / "grpo.py"), *TINY, f"runs_dir={tmp_path}", "run_name=faults",
           "train.steps=40", "checkpoint.every=2", f"cluster.rollout.timeout_s={timeout_s}"]
    log = tmp_path / "faults.log"
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    stopped = []
    try:
        _wait_for_step(run, 0, proc, time.time() + 400, log)
        rewards = [p for p in _descendants(proc.pid) if "RewardWorker" in " ".join(p.cmdline())]
        assert len(rewards) == 1, [p.cmdline() for p in _descendants(proc.pid)]
        rewards[0].send_signal(signal.SIGKILL)
        killed_at = max(r["step"] for r in _rows(run))
        _wait_for_step(run, killed_at + 2, proc, time.time() + 300, log)  # steps went on: the actor came back

        engines = [p for p in _descendants(proc.pid) if any(k in " ".join(p.cmdline()) or k in p.name()
                                                            for k in ("VLLM::", "RolloutEngine"))]
        assert engines, [p.cmdline() for p in _descendants(proc.pid)]
        for p in engines:
            p.send_signal(signal.SIGSTOP)
            stopped.append(p)
        rc = proc.wait(timeout=timeout_s * 3 + 120)  # one deadline, the step in progress, shutting down: never a hang
    finally:
        for p in stopped:
            try:
                p.send_signal(signal.SIGCONT)
            except Exception:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    text = log.read_text()
    last = text.strip().splitlines()[-1]
    assert rc == 1 and last.startswith("run stopped:"), text[-3000:]
    assert "the rollout did not answer" in last and f"cluster.rollout.timeout_s={timeout_s}" in last, last
    assert "checkpoint" in last  # where to resume from
    assert not (run / "summary.json").exists()
