"""Deep RL on CartPole-v1: a short run of each script clearly beats a random policy, and logs what it says."""
import json

import pytest

from classic_rl import a2c, dqn, ppo, reinforce
from config import ConfigError, load

# Budgets far below the scripts' defaults (CleanRL's 500k steps), with step sizes raised to match.
SHORT_RUNS = {
    "ppo": (ppo, dict(total_timesteps=16384, learning_rate=1e-3),
            ["losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl", "losses/clipfrac",
             "losses/explained_variance", "charts/learning_rate"]),
    "dqn": (dqn, dict(total_timesteps=12000, learning_starts=1000, train_frequency=4, exploration_fraction=0.3,
                      target_network_frequency=200, learning_rate=1e-3, batch_size=64, max_grad_norm=10.0),
            ["losses/td_loss", "losses/q_values", "charts/epsilon"]),
    "a2c": (a2c, dict(total_timesteps=30000, learning_rate=1e-3),
            ["losses/policy_loss", "losses/value_loss", "losses/entropy"]),
    "reinforce": (reinforce, dict(total_timesteps=20000),
                  ["losses/policy_loss", "losses/value_loss", "losses/entropy"]),
}


@pytest.mark.parametrize("algo", list(SHORT_RUNS))
def test_short_run_clearly_beats_a_random_policy(algo, tmp_path):
    script, overrides, loss_keys = SHORT_RUNS[algo]
    args = script.Args(seed=1, run_dir=str(tmp_path / algo), **overrides)
    summary = script.train(args)

    random_mean = summary["random/return_mean"]
    assert 10 < random_mean < 40  # CartPole's random policy: about 22
    # the greedy policy, on the same evaluation episodes as the random one
    assert summary["eval/return_mean"] >= max(150.0, 5 * random_mean), summary
    # and the exploring policy itself improved during training
    assert summary["train/return_last100"] >= 3 * random_mean, summary

    rows = [json.loads(line) for line in (tmp_path / algo / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    assert {"charts/episodic_return", "charts/episodic_length", "charts/SPS", *loss_keys} <= keys
    assert any((tmp_path / algo / "tb").iterdir())  # TensorBoard events
    assert json.loads((tmp_path / algo / "summary.json").read_text())["algo"] == algo
    assert (tmp_path / algo / "curves.png").exists()


def test_command_line_overrides_are_checked_where_they_enter():
    assert load(ppo.Args, None, ["seed=3", "learning_rate=1e-3"]).learning_rate == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rat' \(did you mean 'learning_rate'\?\)"):
        load(ppo.Args, None, ["learning_rat=1e-3"])
    with pytest.raises(ConfigError, match="num_minibatches: must divide num_envs \\* num_steps = 512"):
        load(ppo.Args, None, ["num_minibatches=3"])
    with pytest.raises(ConfigError, match="batch_size: must not exceed buffer_size"):
        load(dqn.Args, None, ["buffer_size=10", "batch_size=64"])
    assert load(a2c.Args, None, ["seed=7"]).run_dir == "runs/classic_rl/a2c_seed7"
