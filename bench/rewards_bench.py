"""Reward-scoring throughput on this machine: JSON items/s (in-process and through the REST service) and
sandboxed programs/s.

    .venv/bin/python bench/rewards_bench.py [--items 20000] [--programs 40] [--out runs/rewards_bench.json]
        [--sandbox-only] [--rewards-from DIR] [--compare-unit-tests FILE]

Prints one line per measurement and writes them all as JSON. The sandbox part needs bubblewrap and root
(or a delegated cgroup); it is skipped with the reason otherwise. ``--sandbox-only`` measures only the
unit-test scorer; ``--rewards-from DIR`` imports the ``rewards`` package from DIR instead of this checkout,
to compare with an older commit's (``git archive COMMIT rewards | tar -x -C DIR``). ``--compare-unit-tests
FILE`` (an older ``rewards/unit_tests.py``, e.g. ``git show COMMIT:rewards/unit_tests.py > FILE``) times it
and the current scorer item by item, alternating, so that a machine whose load drifts weighs on both alike.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

Item = make_scorer = None  # imported in main(), from this checkout or --rewards-from


def json_corpus(n: int, seed: int = 0) -> list[Item]:
    """Completions like a JSON-answer task produces: mostly valid objects, a share of typical breakages."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        obj = {"answer": rng.randint(0, 99), "steps": [rng.random() for _ in range(rng.randint(0, 8))],
               "note": "x" * rng.randint(0, 200)}
        text = json.dumps(obj)
        kind = rng.random()
        if kind < 0.1:
            text = text[:-1]                      # truncated
        elif kind < 0.15:
            text = text.replace('"answer"', "'answer'")
        elif kind < 0.2:
            text = text[:-1] + ', "answer": 1}'   # duplicate key
        out.append(Item("What is a+b?", text, obj["answer"]))
    return out


def rate(scorer, items: list[Item], repeat: int = 3) -> float:
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        scorer.score(items)
        best = max(best, len(items) / (time.perf_counter() - t0))
    return best


def service_rate(items: list[Item], batch: int = 256) -> float:
    import uvicorn

    from rewards.client import RewardClient
    from rewards.server import build_app
    from rewards.service_config import ServiceConfig

    token = "bench-token"
    server = uvicorn.Server(uvicorn.Config(build_app(ServiceConfig(max_items=batch, scorers={"json_valid": {}},
                                                                         openrlhf_scorer="json_valid"), token),
                                           host="127.0.0.1", port=0, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    client = RewardClient(url, token, batch_size=batch)
    try:
        client.score("json_valid", items[:batch])  # warm-up
        t0 = time.perf_counter()
        res = client.score("json_valid", items)
        assert len(res) == len(items)
        return len(items) / (time.perf_counter() - t0)
    finally:
        client.close()
        server.should_exit = True
        t.join()


def sandbox_rate(n: int, workers: int) -> float:
    s = make_scorer("python_unit_tests", workers=workers)
    items = [Item("p", f"def add(a, b):\n    return a + b + {i % 2}", "assert add(2, 3) == 5") for i in range(n)]
    t0 = time.perf_counter()
    res = s.score(items)
    dt = time.perf_counter() - t0
    statuses = {r.status for r in res}
    assert statuses <= {"pass", "fail"}, statuses  # half pass, half fail: both paths measured
    return n / dt


def unit_test_ms_interleaved(before_file: str, n: int) -> dict:
    """Wall time per item (one worker), the scorer in ``before_file`` and the current one alternating item by
    item: median and 90th percentile in milliseconds, for a passing and a failing item in turn."""
    import importlib.util
    import statistics

    spec = importlib.util.spec_from_file_location("unit_tests_before", before_file)
    before = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = before  # dataclasses looks the module up
    spec.loader.exec_module(before)
    scorers = {"before": before.PythonUnitTestScorer(workers=1), "after": make_scorer("python_unit_tests", workers=1)}
    items = [Item("p", f"def add(a, b):\n    return a + b + {i % 2}", "assert add(2, 3) == 5") for i in range(2)]
    times = {k: [] for k in scorers}
    for i in range(n):
        for k in (("before", "after") if i % 2 else ("after", "before")):
            t0 = time.perf_counter()
            r = scorers[k].score([items[i % 2]])[0]
            times[k].append(1000 * (time.perf_counter() - t0))
            assert r.status == ("pass", "fail")[i % 2], (k, r)
    out = {}
    for k, ts in times.items():
        ts.sort()
        out[f"unit_test_ms_per_item_{k}_median"] = statistics.median(ts)
        out[f"unit_test_ms_per_item_{k}_p90"] = ts[int(0.9 * (len(ts) - 1))]
    return out


def sandbox_ms_per_call(calls: int = 20000, repeat: int = 3) -> float:
    """What one call from the tests into the solution adds: (an item making ``calls`` calls - an item
    making one) / (calls - 1), best of ``repeat``, in milliseconds."""
    s = make_scorer("python_unit_tests", workers=1)
    many = Item("p", "def add(a, b):\n    return a + b", f"for i in range({calls}):\n    assert add(i, 1) == i + 1")
    one = Item("p", "def add(a, b):\n    return a + b", "assert add(1, 1) == 2")
    best = []
    for item in (many, one):
        times = []
        for _ in range(repeat):
            r = s.score([item])[0]
            assert r.status == "pass", r
            times.append(r.details["wall_s"])
        best.append(min(times))
    return 1000 * (best[0] - best[1]) / (calls - 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--programs", type=int, default=40)
    ap.add_argument("--out", default="runs/rewards_bench.json")
    ap.add_argument("--sandbox-only", action="store_true", help="only the unit-test scorer's measurements")
    ap.add_argument("--rewards-from", help="import the rewards package from this folder instead of the checkout")
    ap.add_argument("--compare-unit-tests", metavar="FILE", help="an older rewards/unit_tests.py to time against")
    args = ap.parse_args()
    sys.path.insert(0, args.rewards_from or str(Path(__file__).resolve().parents[1]))
    global Item, make_scorer
    from rewards import Item, make_scorer
    items = json_corpus(args.items)
    results = {"cpus": os.cpu_count(), "load_avg_1m_at_start": os.getloadavg()[0], "items": args.items}
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}, "steps": {"type": "array"}},
              "required": ["answer"]}
    measurements = [] if args.sandbox_only else [
        ("json_valid_items_per_s", lambda: rate(make_scorer("json_valid"), items)),
        ("json_valid_lenient_items_per_s", lambda: rate(make_scorer("json_valid", allow_nan=True,
                                                                    allow_duplicate_keys=True), items)),
        ("json_schema_items_per_s", lambda: rate(make_scorer("json_schema"),
                                                 [Item(i.prompt, i.completion, schema) for i in items[:5000]])),
        ("exact_answer_items_per_s", lambda: rate(make_scorer("exact_answer"), items)),
        ("json_valid_via_service_items_per_s", lambda: service_rate(items)),
    ]
    from rewards.sandbox import sandbox_problem

    problem = sandbox_problem()
    if problem is None:
        measurements += [("sandbox_programs_per_s_1_worker", lambda: sandbox_rate(args.programs, 1)),
                         ("sandbox_programs_per_s_2_workers", lambda: sandbox_rate(args.programs, 2)),
                         ("sandbox_ms_per_call", sandbox_ms_per_call)]
    else:
        results["sandbox_skipped"] = problem
    if problem is None and args.compare_unit_tests:
        measurements.append(("interleaved", lambda: unit_test_ms_interleaved(args.compare_unit_tests, args.programs)))
    for name, fn in measurements:
        value = fn()
        for k, v in (value.items() if isinstance(value, dict) else [(name, value)]):
            results[k] = round(v, 3)
            print(f"{k:40s} {results[k]:>12.3f}", flush=True)
    results["load_avg_1m_at_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
