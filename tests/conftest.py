"""Shared fixtures: tiny models built once per session, one local Ray cluster per session.

Everything here is real: the tiny model is a Qwen3-architecture model written by tinymodels/, Ray is a
real local cluster, vLLM is the CPU engine.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    d = REPO / ".cache"
    d.mkdir(exist_ok=True)
    return d


@pytest.fixture(scope="session")
def tiny_model_dir(cache_dir) -> Path:
    """~0.36M-parameter Qwen3 model + tokenizer (built once, cached under .cache/models)."""
    from tinymodels import ensure_tiny_model

    return ensure_tiny_model(cache_dir, "tiny", 0)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster with 2 CPUs, shared by the session's tests."""
    import ray

    from cluster.connect import start_local

    if not ray.is_initialized():
        start_local(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
