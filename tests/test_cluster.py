"""The cluster layer against a real local Ray cluster: plans, placement groups, reservations, actors, and its errors."""
import os
import time
from pathlib import Path

import pytest

from cluster import ClusterError, actor_options, connect, make_placement_group, plan_resources
from cluster.plan import check_fits
from config import ClusterConfig, Config, load

REPO = Path(__file__).resolve().parents[1]


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


def test_torch_threads_all_cores_only_when_the_roles_take_turns():
    """A synchronous colocated CPU plan runs one phase at a time: each single-actor role may use every core (0).
    When engines and learner run at once (train.max_staleness > 0), or in a split plan, each keeps its own share."""
    from cluster import torch_threads

    colocate = plan_resources(load(Config, "tiny-cpu", []).cluster)
    assert torch_threads(colocate, "rollout") == 0 and torch_threads(colocate, "learner") == 0
    assert torch_threads(colocate, "rollout", concurrent=True) == 1  # num_cpus 0.5: one thread, not zero
    assert torch_threads(colocate, "learner", concurrent=True) == 1
    split = plan_resources(load(Config, "tiny-cpu", ["cluster.mode=split"]).cluster)
    assert torch_threads(split, "learner") == max(1, round(split.of("learner")[0].num_cpus))


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


# -- the run's reservation (cluster/reservation.py): one detached placement group that stages attach to --------------

def _live(ray, name):
    return [i for i in ray.util.placement_group_table().values() if i["name"] == name and i["state"] != "REMOVED"]


def test_a_reserved_group_is_attached_fitted_and_never_removed_by_a_stage(ray_local):
    """A stage with cluster.reservation places its actors into the reserved bundles (no group of its own), a stage's
    release leaves the reservation in place, reserving the same name again reattaches, and release frees it."""
    from cluster import release_group
    from cluster.reservation import release, reserve

    ray = ray_local
    cfg = load(Config, "tiny-cpu").cluster
    full = plan_resources(cfg)
    pg, created = reserve("test-res", full.bundles, full.strategy, timeout_s=30)
    try:
        assert created and len(_live(ray, "test-res")) == 1
        again, created2 = reserve("test-res", full.bundles, full.strategy)  # a resumed run on the same cluster
        assert not created2 and again.id == pg.id
        cfg.reservation = "test-res"
        plan = plan_resources(cfg, ("learner",))  # a stage with fewer roles than the reservation was made for
        assert make_placement_group(plan).id == pg.id

        @ray.remote
        class Role:
            def where(self):
                return ray.get_runtime_context().get_placement_group_id()

        actor = Role.options(**actor_options(plan, pg, "learner")).remote()
        assert ray.get(actor.where.remote()) == pg.id.hex()
        ray.kill(actor)
        release_group(pg)  # what stage.release does at a stage's end
        assert len(_live(ray, "test-res")) == 1
    finally:
        assert release("test-res")
    assert not _live(ray, "test-res") and not release("test-res")


def test_a_stage_that_does_not_fit_the_reservation_is_refused_before_any_actor(ray_local, tmp_path):
    """pipelines/sft.py with a reservation too small for its learner: a ClusterError that names the role, the
    bundle and the reservation, raised before the stage's actor exists; a name that is not reserved is explained."""
    import ray

    from cluster.reservation import release, reserve
    from pipelines.sft import main

    def actors():
        return len(ray._private.state.actors())  # Ray's actor table (the cluster has no dashboard here)

    reserve("test-small", [{"CPU": 0.25}], "STRICT_PACK", timeout_s=30)
    argv = [f"runs_dir={tmp_path}", "run_name=sft", "model.preset=tiny", "progress=false", "tensorboard=false",
            "sft.steps=1", "sft.mix_total=16"]
    try:
        before = actors()
        with pytest.raises(ClusterError, match=r"cluster\.learner asks 0\.5 CPU but bundle 0 of reservation "
                                               r"'test-small' holds 0\.25 CPU"):
            main(argv + ["cluster.reservation=test-small"])
        assert actors() == before  # refused at start: no actor was made
    finally:
        release("test-small")
    with pytest.raises(ClusterError, match="holds no placement group of that name"):
        main(argv + ["run_name=sft2", "cluster.reservation=nope"])


def test_a_reservation_outlives_its_creator_until_released(ray_local, tmp_path):
    """Detached: a process that reserves and is then killed outright (SIGKILL, no cleanup) leaves the group on the
    cluster; the documented cleanup (`python -m cluster.reservation release NAME cluster.address=...`) frees it."""
    import subprocess
    import sys

    ray = ray_local
    gcs = ray.get_runtime_context().gcs_address
    code = ("import sys, time; sys.path.insert(0, '.'); from cluster import connect; from config import ClusterConfig;"
            "from cluster.reservation import reserve; "
            f"connect(ClusterConfig(address={gcs!r}, reservation='orphan')); "
            "reserve('orphan', [{'CPU': 0.25}], 'PACK', 30); print('reserved', flush=True); time.sleep(600)")
    env = {**os.environ, "RAY_ADDRESS": ""}
    p = subprocess.Popen([sys.executable, "-c", code], cwd=str(REPO), stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "reserved"
    finally:
        p.kill()
        p.wait()
    time.sleep(2)
    assert len(_live(ray, "orphan")) == 1  # the creator is gone, the reservation stays
    out = subprocess.run([sys.executable, "-m", "cluster.reservation", "release", "orphan", f"cluster.address={gcs}"],
                         cwd=str(REPO), capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and "released reservation 'orphan'" in out.stdout, out.stderr
    assert not _live(ray, "orphan")
