"""Tiny Qwen3-architecture models built locally from a seed: no hub, seconds to build."""
from tinymodels.factory import PRESETS, build_tiny_model, ensure_tiny_model  # noqa: F401
