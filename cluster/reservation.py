"""One reservation for a whole post-training run: a named, detached placement group that outlives any single stage.

The course (pipelines/course.py) reserves it before its first stage and releases it after its last; every stage
started with ``cluster.reservation=NAME`` places its actors into that group's bundles (``cluster.plan.
make_placement_group`` attaches instead of creating), so no stage loses its devices to another job between stages.
A stage whose plan does not fit the reserved bundles is refused before any of its actors starts.

Detached: the group belongs to the cluster, not to the process that made it, so a course killed mid-stage leaves
it reserved on a persistent cluster (`ray start`, a multi-node head) until ``resume=true`` reattaches to it or
``python -m cluster.reservation release NAME cluster.address=...`` frees it. (A local cluster that the course
started in its own process goes down with that process, reservation and all.)

Names live in one Ray namespace (``NAMESPACE``): a placement group's name is looked up in the namespace of the job
that asks, and each Ray job gets a fresh anonymous one unless told otherwise (``cluster.connect`` joins this one
whenever ``cluster.reservation`` is set).

    python -m cluster.reservation list    [cluster.address=HOST:PORT]
    python -m cluster.reservation release NAME [cluster.address=HOST:PORT]
"""
from __future__ import annotations

import sys

from cluster.connect import NAMESPACE  # noqa: F401  (one namespace for every process that reserves)

_ATTACHED: set[str] = set()  # ids (hex) of reserved groups this process attached to: never removed by a stage


def _table(name: str) -> dict | None:
    """Ray's record of the live (not removed) placement group named ``name``, or None."""
    import ray

    for info in ray.util.placement_group_table().values():
        if info["name"] == name and info["state"] != "REMOVED":
            return info
    return None


def bundles_of(pg) -> list[dict[str, float]]:
    """The reserved bundles of ``pg``, in index order."""
    import ray

    b = ray.util.placement_group_table(pg)["bundles"]
    return [{k: float(v) for k, v in b[i].items()} for i in sorted(b)]


def _show(bundle: dict[str, float]) -> str:
    parts = [f"{bundle.get('CPU', 0):g} CPU", f"{bundle.get('GPU', 0):g} GPU"]
    if bundle.get("memory"):
        parts.append(f"{bundle['memory'] / 2**30:.3g} GiB")
    return ", ".join(parts)


def attach(name: str):
    """The live reservation ``name`` (``ray.util.get_placement_group``), or a ClusterError that says how to make
    one. Marks it as reserved, so that ``is_reserved`` keeps the stage's release paths from removing it."""
    import ray

    from cluster.connect import ClusterError

    if _table(name) is None:
        raise ClusterError(f"cluster.reservation={name!r}: the cluster at {ray.get_runtime_context().gcs_address} "
                           f"holds no placement group of that name (in namespace {NAMESPACE!r}: "
                           f"`python -m cluster.reservation list` shows them); reserve it first (pipelines/course.py "
                           "does, per run) or drop cluster.reservation so the stage makes a group of its own")
    pg = ray.util.get_placement_group(name)
    _ATTACHED.add(pg.id.hex())
    return pg


def is_reserved(pg) -> bool:
    """Whether ``pg`` is a reservation this process attached to (a stage must leave it in place)."""
    return pg is not None and pg.id.hex() in _ATTACHED


def fit(plan, name: str, reserved: list[dict[str, float]]) -> list[int]:
    """Map the plan's bundles onto the reserved ones (first fit, in order) and point every placement at its reserved
    bundle; raise ClusterError naming each role that finds no room. A plan made from the reservation's own config
    maps bundle i to bundle i; a stage that uses fewer roles takes the first bundles that hold its own."""
    from cluster.connect import ClusterError

    if len(plan.bundles) > len(reserved):
        raise ClusterError(f"the {plan.mode} plan needs {len(plan.bundles)} bundles but reservation {name!r} holds "
                           f"{len(reserved)} ({'; '.join(_show(b) for b in reserved)}): {plan.describe()}. Reserve "
                           "the run with this stage's cluster settings, or lower cluster.<role>.count")
    free, where, misfits = list(range(len(reserved))), [], []
    for i, need in enumerate(plan.bundles):
        j = next((j for j in free if all(need[k] <= reserved[j].get(k, 0.0) + 1e-9 for k in need)), None)
        if j is None:
            k = i  # reported against the bundle at its own index (there is one: fewer bundles were checked above)
            held, roles = reserved[k], [p for p in plan.placements if p.bundle == i]
            before = len(misfits)
            for p in roles:
                for res, ask, unit, scale in (("CPU", p.num_cpus, "CPU", 1), ("GPU", p.num_gpus, "GPU", 1),
                                              ("memory", p.memory_gib * 2**30, "GiB memory", 2**30)):
                    if ask and need.get(res, 0.0) > held.get(res, 0.0) + 1e-9:
                        together = f" ({need[res] / scale:g} with the bundle's other roles)" if len(roles) > 1 else ""
                        misfits.append(f"cluster.{p.role} asks {ask / scale:g} {unit}{together} but bundle {k} of "
                                       f"reservation {name!r} holds {held.get(res, 0.0) / scale:g} {unit}")
            if len(misfits) == before:  # it fits its own index, but an earlier bundle of the plan took that one
                misfits.append(f"bundle {i} of the plan ({_show(need)}) fits no free bundle of reservation {name!r}")
            continue
        free.remove(j)
        where.append(j)
    if misfits:
        raise ClusterError("this stage does not fit the run's reservation: " + "; ".join(misfits)
                           + f". The reservation holds {'; '.join(f'bundle {j}: {_show(b)}' for j, b in enumerate(reserved))}."
                           " Lower the stage's cluster.<role> asks, or reserve the run with room for them")
    for p in plan.placements:
        p.bundle = where[p.bundle]
    return where


def reserve(name: str, bundles: list[dict[str, float]], strategy: str = "PACK", timeout_s: float = 60.0):
    """The detached placement group ``name`` holding ``bundles``: made here and waited for, or -- when a live one
    of that name exists (a resumed run on a persistent cluster) -- that one, if its bundles hold these.

    Returns ``(pg, created)``. Raises ClusterError when the cluster cannot hold the bundles (checked against what is
    free first, then a ``timeout_s`` wait) or when the existing group is too small."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from cluster.connect import ClusterError

    if _table(name) is not None:
        pg = attach(name)
        held = bundles_of(pg)
        if len(held) < len(bundles) or any(any(b[k] > h.get(k, 0.0) + 1e-9 for k in b) for b, h in zip(bundles, held)):
            raise ClusterError(f"reservation {name!r} already exists with bundles {held}, smaller than this run needs "
                               f"({bundles}); release it (`python -m cluster.reservation release {name}`) or pick "
                               "another run_name")
        return pg, False
    free = ray.available_resources()
    totals: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            totals[k] = totals.get(k, 0.0) + v
    short = {k: v for k, v in totals.items() if v > free.get(k, 0.0) + 1e-9}
    if short:
        raise ClusterError(f"reservation {name!r} needs {', '.join(f'{k}={v:g}' for k, v in sorted(totals.items()))} "
                           f"but the cluster has {', '.join(f'{k}={free.get(k, 0):g}' for k in sorted(totals))} free. "
                           "Lower cluster.<role>.num_cpus / num_gpus / count, free the cluster, or add nodes")
    pg = placement_group(bundles, strategy=strategy, name=name, lifetime="detached")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise ClusterError(f"reservation {name!r} ({bundles}, {strategy}) was not ready after {timeout_s:g}s; the "
                           f"cluster has {ray.available_resources()} free. Free resources or raise "
                           "cluster.placement_timeout_s") from None
    _ATTACHED.add(pg.id.hex())
    return pg, True


def release(name: str) -> bool:
    """Remove the reservation ``name`` (its bundles go back to the cluster); False when there was none."""
    import ray
    from ray.util.placement_group import remove_placement_group

    if _table(name) is None:
        return False
    pg = ray.util.get_placement_group(name)
    remove_placement_group(pg)
    _ATTACHED.discard(pg.id.hex())
    return True


def main(argv: list[str]) -> None:
    """``list`` the live reservations, or ``release NAME``; the rest of argv are config overrides (cluster.address)."""
    from cluster.connect import connect
    from config import Config, ConfigError, load

    if not argv or argv[0] not in ("list", "release") or (argv[0] == "release" and len(argv) < 2):
        raise ConfigError("usage: python -m cluster.reservation list|release NAME [cluster.address=HOST:PORT ...]")
    verb, rest = argv[0], argv[1:]
    name = rest.pop(0) if verb == "release" else ""
    cfg = load(Config, "tiny-cpu", rest).cluster
    if cfg.address == "local":
        cfg.address = "auto"  # a local cluster would be a new, empty one: join the running one
    cfg.reservation = name or "-"  # joins the reservations' namespace
    connect(cfg)
    import ray

    if verb == "list":
        for info in ray.util.placement_group_table().values():
            if info["name"] and info["state"] != "REMOVED":
                print(f"{info['name']}\t{info['placement_group_id']}\t{info['state']}\t{list(info['bundles'].values())}")
        return
    print(f"released reservation {name!r}" if release(name) else f"no live reservation named {name!r}", flush=True)


if __name__ == "__main__":
    from config import run_cli

    run_cli(lambda argv: main(argv), sys.argv[1:])
