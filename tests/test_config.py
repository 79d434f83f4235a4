"""The config system: presets load, overrides apply, bad keys and values are named in the error."""
import pytest

from config import Config, ConfigError, load


@pytest.mark.parametrize("preset", ["tiny-cpu", "rtx4080", "multinode"])
def test_presets_load(preset):
    cfg = load(Config, preset)
    assert cfg.cluster.mode in ("colocate", "split")


def test_overrides_apply_and_parse_types():
    cfg = load(Config, "tiny-cpu", ["train.lr=3e-4", "run_name=abc", "rollout.stop=['x','y']", "resume=true",
                                     "cluster.rollout.num_cpus=0.25"])
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.run_name == "abc" and cfg.resume is True
    assert cfg.rollout.stop == ["x", "y"]
    assert cfg.cluster.rollout.num_cpus == 0.25


def test_config_key_on_command_line_picks_preset():
    assert load(Config, None, ["config=multinode"]).cluster.mode == "split"


@pytest.mark.parametrize("override, fragment", [
    ("train.lrr=1", "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    ("train.lr=abc", "train.lr: expected a number"),
    ("cluster.mode=spread", "cluster.mode: 'spread' is not one of ['colocate', 'split']"),
    ("rollout.n_samples=0", "rollout.n_samples: must be >= 1"),
    ("train.steps=2.5", "train.steps: expected a whole number"),
    ("resume=maybe", "resume: expected true or false"),
    ("model.lora.r=0", "model.lora.r: must be >= 1"),
    ("novel=1", "unknown config key 'novel'"),
    ("justtext", "not of the form key.sub=value"),
])
def test_bad_input_names_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load(Config, "tiny-cpu", [override])
    assert fragment in str(e.value)


def test_unknown_preset_lists_known():
    with pytest.raises(ConfigError, match="known presets"):
        load(Config, "tpu-pod")


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(Config, str(p))


@pytest.mark.parametrize("args, fragment", [
    (["algo=dappo"], "algo.name='dappo' is not known; choose one of"),          # learners.algorithms.resolve
    (["algo=ppo"], "needs a critic: run pipelines/ppo.py"),                     # the wrong script for the algorithm
    (["data.train=/no/such/file.jsonl"], "data file /no/such/file.jsonl does not exist"),  # tasks.prompts
    (["train.lr=fast"], "train.lr"),                                            # the loader
    (["model.finetune=lora", "model.adapter=/no/adapter"], "no PEFT adapter at /no/adapter (model.adapter"),
    (["model.reference_adapter=/no/ref"], "no PEFT adapter at /no/ref (model.reference_adapter"),
])
def test_pipeline_reports_bad_input_without_a_traceback(args, fragment):
    """A user's mistake ends the job script with 'config error: ...' and exit status 1, before any cluster or
    model starts -- not with a Python traceback (the way it reads under `ray job submit`, too)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, str(repo / "pipelines" / "grpo.py"), *args], capture_output=True, text=True,
                       timeout=120, cwd=repo)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("config error: ") and fragment in p.stderr, p.stderr


def test_a_preset_extends_another(tmp_path):
    """``extends: tiny-cpu`` reads tiny-cpu first and merges the file over it; a circle is refused by name."""
    child = tmp_path / "child.yaml"
    child.write_text("extends: tiny-cpu\nrollout: {max_new_tokens: 40}\n")
    cfg = load(Config, str(child))
    base = load(Config, "tiny-cpu")
    assert cfg.rollout.max_new_tokens == 40 and cfg.rollout.n_samples == base.rollout.n_samples
    assert cfg.train == base.train
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    with pytest.raises(ConfigError, match="circle"):
        load(Config, str(loop))
