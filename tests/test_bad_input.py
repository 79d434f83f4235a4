"""Bad input stops at the door: each pipeline, given one bad value, ends with one `config error: ...` line naming
the key and what to change, exit status 1, and starts no Ray cluster (so no actor)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.preflight import fit_prompts

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9 2+2?", "answer": 4}\n'.encode("latin-1"))
    with open(d / "long.jsonl", "w") as f:
        f.write(json.dumps({"prompt": "x " * 800, "answer": 1}) + "\n")
        for i in range(3):
            f.write(json.dumps({"prompt": f"{i}+1=?", "answer": i + 1}) + "\n")
    (d / "no_config").mkdir()
    (d / "not_lm").mkdir()
    (d / "not_lm" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (d / "service.yaml").write_bytes("scorers:\n  caf\xe9: {}\n".encode("latin-1"))
    (d / "service2.yaml").write_text("scorers:\n  no_such_scorer: {}\n")
    return d


CASES = [  # (script, args, what the message must name)
    ("grpo", ["model.path=/nonexistent/model"], "model.path=/nonexistent/model: no such folder"),
    ("grpo", ["model.path={d}/no_config"], "no config.json"),
    ("grpo", ["model.path={d}/not_lm"], "model_type 'vit' is not a causal language model"),
    ("grpo", ["reward.scorers={{no_such_scorer: 1.0}}"], "unknown scorer 'no_such_scorer'"),
    ("grpo", ["data.train={d}/latin1.jsonl"], "is not UTF-8 text (byte 0xe9"),
    ("grpo", ["data.train={d}/long.jsonl", "data.heldout={d}/long.jsonl", "data.too_long=error"],
     "data.train: 1 of 4 prompts are longer than 240 tokens"),
    ("grpo", ["algo=no_such_algo"], "no_such_algo"),
    ("ppo", ["model.path=/nonexistent/model"], "model.path=/nonexistent/model: no such folder"),
    ("ppo", ["algo.critic_model=/nonexistent/critic"], "algo.critic_model=/nonexistent/critic: no such folder"),
    ("ppo", ["data.train={d}/latin1.jsonl"], "is not UTF-8 text"),
    ("sft", ["model.path=/nonexistent/model"], "model.path=/nonexistent/model: no such folder"),
    ("dpo", ["model.path={d}/no_config"], "no config.json"),
    ("dpo", ["dpo.train=rollouts", "reward.scorers={{no_such_scorer: 1.0}}"], "unknown scorer 'no_such_scorer'"),
    ("rm", ["rm.model_path=/nonexistent/rm"], "rm.model_path=/nonexistent/rm: no such folder"),
    ("continual", ["model.path=/nonexistent/model"], "model.path=/nonexistent/model: no such folder"),
    ("course", ["reward.scorers={{no_such_scorer: 1.0}}"], "unknown scorer 'no_such_scorer'"),
    ("course", ["model.path=/nonexistent/model"], "model.path=/nonexistent/model: no such folder"),
    ("eval", ["model.path=/nonexistent/model"], "model.path=/nonexistent/model: no such folder"),
]


def _ray_sessions() -> set[str]:
    root = Path("/tmp/ray")
    return {p.name for p in root.glob("session_*") if p.name != "session_latest"} if root.exists() else set()


@pytest.mark.parametrize("script,args,needle", CASES, ids=[f"{c[0]}-{c[1][-1].split('=')[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_config_error_before_any_actor(bad_files, tmp_path, script, args, needle):
    before = _ray_sessions()
    cmd = [sys.executable, str(REPO / "pipelines" / f"{script}.py"), f"runs_dir={tmp_path}", "progress=false",
           *[a.format(d=bad_files) for a in args]]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("config error: ") and needle in last, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert _ray_sessions() == before  # no Ray cluster was started, so no actor


@pytest.mark.parametrize("file,needle", [("service.yaml", "is not UTF-8 text"),
                                         ("service2.yaml", "unknown scorer 'no_such_scorer'")])
def test_reward_service_settings_file(bad_files, file, needle):
    out = subprocess.run([sys.executable, "-m", "rewards.server", "--config", str(bad_files / file), "--port", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "REWARD_API_TOKEN": "t"})
    assert out.returncode == 1 and needle in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def test_too_long_prompts_are_dropped_with_a_count_or_refused():
    ids, rows = [[1] * 5, [1] * 300, [1] * 10], [{"i": 0}, {"i": 1}, {"i": 2}]
    kept_ids, kept = fit_prompts("data.train", ids, rows, max_model_len=256, max_new_tokens=16, too_long="drop")
    assert [r["i"] for r in kept] == [0, 2] and kept_ids == [ids[0], ids[2]]
    from config import ConfigError

    with pytest.raises(ConfigError, match=r"1 of 3 prompts are longer than 240 tokens .*row 2"):
        fit_prompts("data.train", ids, rows, 256, 16, "error")
    with pytest.raises(ConfigError, match="every"):  # dropping everything leaves nothing to train on: refused
        fit_prompts("data.train", [[1] * 300], [{}], 256, 16, "drop")
    with pytest.raises(ConfigError, match="leaves no room for a prompt"):
        fit_prompts("data.train", ids, rows, 16, 16, "drop")
