"""The cluster layer against a real local Ray cluster: plans, placement groups, actors, and its errors."""
import os

import pytest

from cluster import ClusterError, actor_options, connect, make_placement_group, plan_resources
from cluster.plan import check_fits
from config import ClusterConfig, Config, load


def test_colocate_and_split_plans_on_cpu_fit_two_cores(ray_local):
    ray = ray_local
    cfg = load(Config, "tiny-cpu").cluster
    for mode in ("colocate", "split"):
        cfg.mode = mode
        plan = plan_resources(cfg)
        pg = make_placement_group(plan, timeout_s=30)

        @ray.remote
        class Role:
            def where(self):
                return ray.get_runtime_context().get_placement_group_id()

        actors = [Role.options(**actor_options(plan, pg, p.role, p.index)).remote() for p in plan.placements]
        assert set(ray.get([a.where.remote() for a in actors])) == {pg.id.hex()}
        assert len(plan.bundles) == (1 if mode == "colocate" else 3)
        for a in actors:
            ray.kill(a)
        ray.util.remove_placement_group(pg)
        # Ray returns the bundles asynchronously; wait before planning again.
        import time

        deadline = time.time() + 60
        while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
            time.sleep(0.5)


def test_plan_that_does_not_fit_names_roles(ray_local):
    cfg = ClusterConfig(mode="split")
    cfg.learner.num_cpus = 64
    plan = plan_resources(cfg)
    with pytest.raises(ClusterError) as e:
        make_placement_group(plan, timeout_s=5)
    msg = str(e.value)
    assert "learner[0] asks 64 CPU" in msg and "the cluster has CPU=" in msg


def test_colocate_gpu_fractions_must_share_one_card():
    cfg = load(Config, "rtx4080").cluster
    cfg.learner.num_gpus = 0.8
    with pytest.raises(ValueError, match="colocate mode shares one GPU"):
        plan_resources(cfg)


def test_gpu_plan_checked_against_a_cpu_cluster():
    plan = plan_resources(load(Config, "multinode").cluster)
    with pytest.raises(ClusterError, match="GPU=8"):
        check_fits(plan, {"CPU": 64.0})


def test_cpu_device_rejects_gpu_asks():
    cfg = ClusterConfig()
    cfg.rollout.num_gpus = 1
    with pytest.raises(ValueError, match="device=cpu"):
        plan_resources(cfg)


def test_unreachable_address_is_explained():
    with pytest.raises(ClusterError, match="cannot reach the Ray head at 127.0.0.1:1"):
        connect(ClusterConfig(address="127.0.0.1:1"))


def test_malformed_address_is_explained():
    with pytest.raises(ClusterError, match="is not HOST:PORT"):
        connect(ClusterConfig(address="not-an-address"))


def test_token_mode_without_token_is_explained(monkeypatch, tmp_path):
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    try:
        with pytest.raises(ClusterError, match="no token"):
            connect(ClusterConfig(address=f"127.0.0.1:{port}"))
    finally:
        srv.close()
