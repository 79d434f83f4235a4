"""`make demo` as a new user runs it, at a tiny budget: scripts/demo.sh starts a local Ray head with token auth,
submits pipelines/grpo.py with `ray job submit`, the run's results land in runs/<name>/, and the head it started
is stopped afterwards."""
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False


def test_demo_script_submits_a_job_and_stops_its_head():
    gcs, dash = _free_port(), _free_port()
    name = f"demo-test-{os.getpid()}"
    run = REPO / "runs" / name
    shutil.rmtree(run, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_HEAD_PORT=str(gcs), RAY_DASHBOARD_PORT=str(dash), RUN_NAME=name, PYTHONUNBUFFERED="1")
    try:
        out = subprocess.run(["bash", "scripts/demo.sh", "train.steps=2", "train.prompts_per_step=4", "rollout.n_samples=4",
                              "train.heldout_prompts=8", "checkpoint.every=1", "progress=false"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        log = out.stdout[-4000:] + out.stderr[-2000:]
        assert out.returncode == 0, log
        assert "starting a local Ray head" in out.stdout and "succeeded" in out.stdout, log
        assert "stopping the Ray head it started" in out.stdout, log
        # the job's results, written by the job on the cluster
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 2 and summary["heldout_reward_start"] is not None
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [0, 1]
        for key in ("rollout_corr/kl", "rollout_corr/max_abs_diff", "rollout_corr/frac_over", "sync/tolerance",
                    "sync/floor_mean", "sync/gap_mean", "sync/probe_resolvable"):
            assert key in rows[-1], key
        assert rows[-1]["sync/gap_mean"] <= rows[-1]["sync/tolerance"]
        assert (run / "checkpoints").is_dir() and (run / "reward_curve.png").exists()
        # the head it started is gone: neither its GCS nor its dashboard answers
        assert not _listening(gcs) and not _listening(dash)
    finally:
        shutil.rmtree(run, ignore_errors=True)
        if _listening(gcs):  # never leave a head behind, even when an assertion failed
            subprocess.run([str(REPO / ".venv" / "bin" / "ray"), "stop", "--force"], capture_output=True)
