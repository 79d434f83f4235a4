"""Typed configuration for every stage: ``load(Config, "tiny-cpu", ["train.lr=1e-4"])``."""
from config.cli import run_cli  # noqa: F401
from config.loader import ConfigError, RunStopped, load, parse_overrides, preset_path, to_dict  # noqa: F401
from config.schema import (  # noqa: F401
    AlgoConfig, CheckpointConfig, ClusterConfig, Config, DataConfig, LoraConfig, ModelConfig,
    RewardConfig, RoleResources, RolloutConfig, TrainConfig,
)
