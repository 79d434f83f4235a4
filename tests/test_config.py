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
