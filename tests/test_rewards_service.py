"""The REST reward service over a real loopback socket: auth on every route, each limit, malformed input,
deadlines, concurrency, the OpenRLHF shape, metrics and docs; its client, remote scorers and plugins."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse

from rewards import Item, make_scorer, registry
from rewards.client import RewardClient, RewardServiceError
from rewards.remote import allow_destinations
from rewards.sandbox import sandbox_problem
from rewards.server import build_app
from rewards.service_config import ServiceConfig

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPO = Path(__file__).resolve().parents[1]
needs_sandbox = pytest.mark.skipif(sandbox_problem() is not None, reason="sandbox unavailable here")


@contextmanager
def serve(app):
    """Run ``app`` with uvicorn on a free loopback port in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(400):
        if server.started:
            break
        time.sleep(0.025)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(timeout=10)


@pytest.fixture(scope="module")
def url():
    cfg = ServiceConfig(max_body_bytes=64 << 10, max_items=8, max_item_chars=1000, deadline_s=3.0, max_concurrency=1,
                        scorers={"json_valid": {}, "exact_answer": {}, "json_schema": {},
                                 "python_unit_tests": {"wall_s": 20, "cpu_s": 20, "workers": 2},
                                 "strict_json": {"scorer": "json_valid", "require": "object"},
                                 "combo": {"scorer": "weighted", "weights": {"json_valid": 0.2, "exact_answer": 1.0}}})
    with serve(build_app(cfg, TOKEN)) as u:
        yield u


def post(url, path, body, headers=AUTH, **kw):
    return httpx.post(url + path, json=body, headers=headers, timeout=30, **kw)


ROUTES = [("GET", "/v1/scorers"), ("POST", "/v1/score"), ("POST", "/v1/openrlhf"), ("POST", "/get_reward"),
          ("GET", "/metrics"), ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/redoc"), ("GET", "/no/such/route"),
          ("DELETE", "/v1/score")]


@pytest.mark.parametrize("method,path", ROUTES)
def test_every_route_but_health_needs_the_token(url, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
        r = httpx.request(method, url + path, headers=headers, json={"scorer": "json_valid", "items": []})
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
    r = httpx.request(method, url + path, headers=AUTH, json={"scorer": "json_valid", "items": [], "query": []})
    assert r.status_code != 401


def test_health_is_open_and_says_nothing_more(url):
    r = httpx.get(url + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_score_one_result_per_item_in_order(url):
    items = [{"prompt": "1+6=?", "completion": '{"answer": 7}', "reference": 7},
             {"prompt": "1+6=?", "completion": "no idea", "reference": 7},
             {"prompt": "1+6=?", "completion": "\\boxed{7}", "reference": "7"}]
    r = post(url, "/v1/score", {"scorer": "exact_answer", "items": items})
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x["score"] for x in res] == [1.0, 0.0, 1.0] and all(x["status"] == "ok" for x in res)
    r = post(url, "/v1/score", {"scorer": "strict_json", "items": [{"completion": "[1]"}, {"completion": "{}"}]})
    assert [x["score"] for x in r.json()["results"]] == [0.0, 1.0]
    r = post(url, "/v1/score", {"scorer": "combo", "items": items[:2]})
    res = r.json()["results"]
    assert [x["score"] for x in res] == pytest.approx([1.2, 0.0])
    assert res[0]["details"]["statuses"] == {"json_valid": "ok", "exact_answer": "ok"}
    schema = {"type": "object", "required": ["answer"]}
    r = post(url, "/v1/score", {"scorer": "json_schema", "items": [{"completion": '{"answer": 1}', "reference": schema},
                                                                    {"completion": "{}", "reference": schema}]})
    assert [x["score"] for x in r.json()["results"]] == [1.0, 0.0]


def test_body_limit_declared_and_streamed(url):
    big = {"scorer": "json_valid", "items": [{"completion": "x" * (70 << 10)}]}
    r = post(url, "/v1/score", big)
    assert r.status_code == 413 and "max_body_bytes" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit must hold on the stream itself
        for _ in range(100):
            yield b"x" * 1024

    r = httpx.post(url + "/v1/score", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413


def test_batch_limit_and_per_item_length(url):
    r = post(url, "/v1/score", {"scorer": "json_valid", "items": [{"completion": "{}"}] * 9})
    assert r.status_code == 413 and "max_items=8" in r.json()["detail"]
    r = post(url, "/v1/score", {"scorer": "json_valid", "items": [{"completion": "{}"}, {"completion": "1" * 1001},
                                                                   {"completion": "[]", "reference": ["x" * 2000]}]})
    res = r.json()["results"]
    assert r.status_code == 200 and [x["status"] for x in res] == ["ok", "error", "error"]
    assert res[0]["score"] == 1.0 and "max_item_chars" in res[1]["details"]["reason"]


@pytest.mark.parametrize("body,code", [
    (b"not json", 422),
    (b'{"scorer": "json_valid"}', 422),                                          # no items
    (b'{"scorer": "json_valid", "items": [{"completion": 5}]}', 422),             # wrong type
    (b'{"scorer": "json_valid", "items": [{"completion": "x", "extra": 1}]}', 422),  # unknown field
    (b'{"scorer": "json_valid", "items": {}}', 422),
    (b'{"scorer": "json_valid", "items": [], "deadline_s": -1}', 422),
    (b'{"scorer": "os:system", "items": [{"completion": "x"}]}', 400),            # never imported
    (b'{"scorer": "reward_model", "items": [{"completion": "x"}]}', 400),         # built-in but not served
    (b"[" * 30000 + b"]" * 30000, 400),                                           # too deep to parse
])
def test_malformed_requests_get_a_clear_4xx(url, body, code):
    r = httpx.post(url + "/v1/score", content=body, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == code, r.text[:300]
    assert r.json()["detail"]
    assert httpx.get(url + "/healthz").status_code == 200


@needs_sandbox
def test_deadline_returns_per_item_statuses(url):
    items = [{"completion": "def f(): return 1", "reference": "assert f() == 1"},
             {"completion": "import time\ntime.sleep(60)", "reference": "assert True"},
             {"completion": "import time\ntime.sleep(60)", "reference": "assert True"},
             {"completion": "def f(): return 1", "reference": "assert f() == 1"}]
    t0 = time.monotonic()
    r = post(url, "/v1/score", {"scorer": "python_unit_tests", "items": items, "deadline_s": 1.5})
    assert time.monotonic() - t0 < 10
    res = r.json()["results"]
    assert r.status_code == 200 and len(res) == 4
    assert res[0]["status"] == "pass"
    assert res[1]["status"] == "timeout" and res[1]["score"] is None
    assert res[3]["status"] in ("pass", "timeout")  # queued behind the sleepers: either finished or cut off


@needs_sandbox
def test_concurrency_limit_answers_429_at_once(url):
    slow = {"scorer": "python_unit_tests", "deadline_s": 2.5,
            "items": [{"completion": "import time\ntime.sleep(60)", "reference": "assert True"}]}
    first = {}
    t = threading.Thread(target=lambda: first.setdefault("r", post(url, "/v1/score", slow)))
    t.start()
    time.sleep(0.8)
    r = post(url, "/v1/score", {"scorer": "json_valid", "items": [{"completion": "{}"}]})
    t.join()
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert first["r"].status_code == 200 and first["r"].json()["results"][0]["status"] == "timeout"
    r = post(url, "/v1/score", {"scorer": "json_valid", "items": [{"completion": "{}"}]})
    assert r.status_code == 200


def test_openrlhf_shape(url):
    prompt = "<|im_start|>user\n2+5?<|im_end|>\n<|im_start|>assistant\n"
    body = {"query": [prompt + '{"answer": 7}', prompt + '{"answer": 6}'], "prompts": [prompt, prompt],
            "labels": ["7", "7"], "templates": "chatml"}
    for path in ("/v1/openrlhf", "/get_reward"):
        r = post(url, path, body)
        assert r.status_code == 200
        out = r.json()
        assert out["rewards"] == [1.0, 0.0] and out["scores"] == [1.0, 0.0]
        assert out["extra_logs"] == {"reward_failed": [0.0, 0.0]}
    r = post(url, "/v1/openrlhf", {"query": ["a", "b"], "labels": ["1"]})
    assert r.status_code == 422 and "labels" in r.json()["detail"]


def test_metrics_docs_and_scorer_list(url):
    post(url, "/v1/score", {"scorer": "json_valid", "items": [{"completion": "{}"}, {"completion": "{"}]})
    m = httpx.get(url + "/metrics", headers=AUTH).text
    assert 'reward_items_total{scorer="json_valid",status="ok"}' in m
    assert 'reward_requests_total{code="401",route="/v1/score"}' in m
    assert "reward_score_seconds_bucket" in m
    spec = httpx.get(url + "/openapi.json", headers=AUTH).json()
    assert "/v1/score" in spec["paths"] and "/v1/openrlhf" in spec["paths"]
    info = httpx.get(url + "/v1/scorers", headers=AUTH).json()
    assert "strict_json" in info["scorers"] and info["limits"]["max_items"] == 8


# ---- the client --------------------------------------------------------------------------------------------
def test_client_scores_refuses_and_survives_an_absent_service(url):
    c = RewardClient(url, TOKEN, timeout_s=5, batch_size=3)
    items = [Item("p", '{"answer": %d}' % i, 2) for i in range(7)]  # 3 requests of at most 3
    assert [r.score for r in c.score("exact_answer", items)] == [0, 0, 1, 0, 0, 0, 0]
    with pytest.raises(RewardServiceError, match="401"):
        RewardClient(url, "wrong").score("json_valid", [Item("p", "{}")])
    with pytest.raises(RewardServiceError, match="unknown scorer"):
        c.score("nope", [Item("p", "{}")])
    gone = RewardClient("http://127.0.0.1:9", TOKEN, timeout_s=1, retries=0).score("json_valid", [Item("p", "{}")])
    assert gone[0].score is None and gone[0].status == "error" and "cannot reach" in gone[0].details["reason"]
    with pytest.raises(ValueError, match="token"):
        RewardClient(url, "")


def test_weighted_composition_of_served_scorers_matches_in_process(url):
    from rewards import WeightedScorer
    from rewards.client import ServiceScorer

    c = RewardClient(url, TOKEN, timeout_s=5)
    assert "exact_answer" in c.scorers()["scorers"]
    weights = {"json_valid": 0.2, "exact_answer": 1.0}
    items = [Item("p", '{"answer": 7}', 7), Item("p", "7", 7), Item("p", "{}", 7)]
    remote = WeightedScorer(weights, components={n: ServiceScorer(c, n) for n in weights}).score(items)
    local = WeightedScorer(weights).score(items)
    assert [r.score for r in remote] == [r.score for r in local] == pytest.approx([1.2, 1.2, 0.2])
    with pytest.raises(RewardServiceError, match="401"):
        RewardClient(url, "wrong").scorers()


def _flaky_app(fail_first: int, mode: str):
    """A stand-in remote scorer: the first ``fail_first`` calls answer 503 (or stall), then it works."""
    app = FastAPI()
    app.state.calls = 0

    @app.post("/score")
    async def score(req: Request):
        import asyncio

        body = await req.json()
        app.state.calls += 1
        if app.state.calls <= fail_first:
            if mode == "503":
                return JSONResponse({"detail": "busy"}, status_code=503)
            if mode == "400":
                return JSONResponse({"detail": "bad"}, status_code=400)
            await asyncio.sleep(2)
        return {"rewards": [float(len(q)) for q in body["query"]]}

    @app.post("/moved")
    async def moved():
        return RedirectResponse("http://example.com/score", status_code=307)

    return app


@pytest.mark.parametrize("mode,fail_first,retries,expect_calls,ok", [
    ("503", 2, 2, 3, True),      # 5xx retried until it works
    ("503", 5, 2, 3, False),     # bounded: gives up after retries + 1
    ("stall", 1, 1, 2, True),    # timeouts retried
    ("400", 1, 3, 1, False),     # 4xx never retried
])
def test_remote_scorer_retries_only_5xx_and_timeouts(mode, fail_first, retries, expect_calls, ok):
    app = _flaky_app(fail_first, mode)
    with serve(app) as u:
        allow_destinations(["127.0.0.1"])
        s = make_scorer("remote", url=u + "/score", protocol="openrlhf", timeout_s=0.5, retries=retries)
        r = s.score([Item("ab", "cde"), Item("", "x")])
    assert app.state.calls == expect_calls
    if ok:
        assert [x.score for x in r] == [5.0, 1.0]
    else:
        assert all(x.score is None for x in r) and r[0].status in ("error", "timeout")


def test_remote_scorer_destination_allowlist_and_no_redirects(url):
    with pytest.raises(ValueError, match="allowlist"):
        make_scorer("remote", url="http://10.1.2.3:8000/score", protocol="openrlhf")
    with pytest.raises(ValueError, match="http"):
        make_scorer("remote", url="file:///etc/passwd", protocol="openrlhf")
    app = _flaky_app(0, "503")
    with serve(app) as u:
        allow_destinations(["127.0.0.1"])
        r = make_scorer("remote", url=u + "/moved", protocol="openrlhf", retries=0).score([Item("p", "c")])
    assert r[0].score is None and "307" in r[0].details["reason"]
    # raypost protocol against our own service, token from the environment
    os.environ["TEST_REMOTE_TOKEN"] = TOKEN
    try:
        s = make_scorer("remote", url=url, scorer="exact_answer", token_env="TEST_REMOTE_TOKEN")
        assert [x.score for x in s.score([Item("p", "answer: 3", 3)])] == [1.0]
    finally:
        del os.environ["TEST_REMOTE_TOKEN"]


# ---- plugins -------------------------------------------------------------------------------------------------
@pytest.fixture()
def plugin_dist(tmp_path, monkeypatch):
    """An installed distribution providing the ``raypost.rewards`` entry point ``shout``."""
    (tmp_path / "shout_plugin.py").write_text(
        "from rewards.base import Result\n"
        "class Shout:\n"
        "    name = 'shout'\n"
        "    def __init__(self, bonus=0.0):\n        self.bonus = bonus\n"
        "    def score(self, items):\n"
        "        return [Result(float(it.completion.isupper()) + self.bonus, 'ok') for it in items]\n")
    dist = tmp_path / "shout_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[raypost.rewards]\nshout = shout_plugin:Shout\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_enabled", set())
    return tmp_path


def test_plugins_load_only_when_the_operator_enables_them(plugin_dist):
    assert registry.installed_plugins()["shout"] == "shout_plugin:Shout"
    with pytest.raises(ValueError, match="installed plugin but not enabled"):
        make_scorer("shout")
    assert "shout_plugin" not in sys.modules
    registry.enable_plugins(["shout"])
    assert [r.score for r in make_scorer("shout", bonus=0.5).score([Item("p", "HI"), Item("p", "hi")])] == [1.5, 0.5]


def test_service_serves_enabled_plugins_by_config_only(plugin_dist):
    cfg = ServiceConfig(plugins=["shout"], scorers={"shout": {}, "json_valid": {}})
    with serve(build_app(cfg, TOKEN)) as u:
        r = post(u, "/v1/score", {"scorer": "shout", "items": [{"completion": "LOUD"}]})
        assert r.json()["results"][0]["score"] == 1.0
        r = post(u, "/v1/score", {"scorer": "shout_plugin:Shout", "items": [{"completion": "LOUD"}]})
        assert r.status_code == 400


# ---- reliability: hung scorers, non-finite numbers, batches over the body limit -------------------------------
PLUGINS = """
import os, threading, time
from pathlib import Path
from rewards.base import Result

class Hang:
    \"\"\"Writes the pid of the process it runs in, then never returns (no deadline support).\"\"\"
    name = 'hang'
    def __init__(self, pid_dir='', in_thread=False):
        self.pid_dir, self.in_thread = pid_dir, in_thread
    def score(self, items):
        Path(self.pid_dir, str(os.getpid())).touch()
        if self.in_thread:  # a helper thread that outlives the call, as a composite's overrun component does
            threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
            return [Result(0.5, 'ok') for _ in items]
        while True:
            time.sleep(0.05)

class Crash:
    name = 'crash'
    def score(self, items):
        if items[0].completion == 'die':
            os._exit(3)  # as a segfault or the OOM killer would end it: no answer, no exception
        return [Result(1.0, 'ok') for _ in items]

class NonFinite:
    name = 'nonfinite'
    def score(self, items):
        vals = [float('nan'), float('inf'), float('-inf'), 1.0]
        return [Result(vals[i % 4], 'ok', {'x': vals[i % 4]}) for i, _ in enumerate(items)]
"""


@pytest.fixture()
def test_plugins(tmp_path, monkeypatch):
    """Installed distributions providing the ``raypost.rewards`` entry points ``hang`` and ``nonfinite``."""
    (tmp_path / "reliability_plugins.py").write_text(PLUGINS)
    dist = tmp_path / "reliability_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: reliability-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[raypost.rewards]\nhang = reliability_plugins:Hang\n"
                                           "nonfinite = reliability_plugins:NonFinite\n"
                                           "crash = reliability_plugins:Crash\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_enabled", set())
    (tmp_path / "pids").mkdir()
    return tmp_path


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _scorer_threads() -> int:
    return sum(t.name.startswith("score-") for t in threading.enumerate())


def test_timed_out_scorers_leave_no_more_work_alive_than_the_cap(test_plugins):
    """Six requests whose scorer never returns, at max_concurrency=1: each gets its timeouts (not 429: the
    slot comes back), every process a hung scorer ran in is gone afterwards, no scorer thread is left in the
    service's process, and at most max_concurrency worker processes are alive at any check."""
    import multiprocessing

    pid_dir = test_plugins / "pids"
    cfg = ServiceConfig(max_concurrency=1, deadline_s=0.5, plugins=["hang"],
                        scorers={"hang": {"pid_dir": str(pid_dir)}, "json_valid": {},
                                 "leaky": {"scorer": "hang", "pid_dir": str(pid_dir), "in_thread": True}})
    threads_before = _scorer_threads()
    others = {c.pid for c in multiprocessing.active_children()}  # e.g. the module service's worker

    def workers():
        return [c for c in multiprocessing.active_children() if c.name == "reward-scorer" and c.pid not in others]

    app = build_app(cfg, TOKEN)
    pool = app.state.pool
    with serve(app) as u:
        for n in range(6):
            r = post(u, "/v1/score", {"scorer": "hang", "items": [{"completion": "x"}, {"completion": "y"}]})
            assert r.status_code == 200, r.text
            assert [x["status"] for x in r.json()["results"]] == ["timeout", "timeout"]
            pids = [int(f.name) for f in pid_dir.iterdir()]
            assert len(pids) == n + 1 and os.getpid() not in pids  # each ran in its own worker, not here
            assert not any(_alive(p) for p in pids), "a timed-out scorer's process still runs"
            assert len(pool.pids()) <= cfg.max_concurrency and pool.busy() == 0
            assert _scorer_threads() == threads_before
        # a scorer that returns but leaves a thread working: its worker is ended too
        r = post(u, "/v1/score", {"scorer": "leaky", "items": [{"completion": "x"}]})
        assert r.json()["results"][0] == {"score": 0.5, "status": "ok", "details": {}}
        assert not any(_alive(int(f.name)) for f in pid_dir.iterdir())
        r = post(u, "/v1/score", {"scorer": "json_valid", "items": [{"completion": "{}"}]})
        assert r.json()["results"][0]["score"] == 1.0  # the service recovers, in a fresh worker
        assert len(workers()) <= cfg.max_concurrency
        info = httpx.get(u + "/v1/scorers", headers=AUTH).json()["workers"]
        assert info["killed"] == 6 and info["busy"] == 0 and info["alive"] <= cfg.max_concurrency
        assert "reward_scorer_kills_total 6.0" in httpx.get(u + "/metrics", headers=AUTH).text
    assert not workers()  # closed with the app


def test_a_scorer_that_kills_its_process_costs_its_items_only(test_plugins):
    cfg = ServiceConfig(max_concurrency=1, plugins=["crash"], scorers={"crash": {}})
    app = build_app(cfg, TOKEN)
    with serve(app) as u:
        r = post(u, "/v1/score", {"scorer": "crash", "items": [{"completion": "die"}, {"completion": "x"}]})
        assert r.status_code == 200
        res = r.json()["results"]
        assert [x["status"] for x in res] == ["error", "error"] and "exit code 3" in res[0]["details"]["reason"]
        assert app.state.pool.busy() == 0 and not app.state.pool.pids()
        r = post(u, "/v1/score", {"scorer": "crash", "items": [{"completion": "x"}]})
        assert r.json()["results"][0]["score"] == 1.0  # a fresh worker


def _strict(text: str):
    """Parse as standard JSON: NaN / Infinity are refused."""
    def refuse(c):
        raise ValueError(f"non-standard JSON constant {c}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("path,body,field", [
    ("/v1/score", b'{"scorer": "json_valid", "items": [{"completion": "x"}], "deadline_s": NaN}', "deadline_s"),
    ("/v1/score", b'{"scorer": "json_valid", "items": [{"completion": "x"}], "deadline_s": Infinity}', "deadline_s"),
    ("/v1/score", b'{"scorer": "json_valid", "items": [{"completion": "x"}], "deadline_s": -Infinity}', "deadline_s"),
    ("/v1/score", b'{"scorer": "json_valid", "items": [{"completion": "x"}], "deadline_s": 1e999}', "deadline_s"),
    ("/v1/score", b'{"scorer": "exact_answer", "items": [{"completion": "1", "reference": NaN}]}',
     "items[0].reference"),
    ("/v1/score", b'{"scorer": "json_schema", "items": [{"completion": "1"}, '
                  b'{"completion": "1", "reference": {"maximum": [1, Infinity]}}]}', "items[1].reference.maximum[1]"),
    ("/v1/score", b'{"scorer": "json_valid", "items": [{"completion": NaN}]}', "items[0].completion"),
    ("/v1/score", b'{"scorer": "json_valid", "items": [{"prompt": -Infinity, "completion": "x"}]}', "items[0].prompt"),
    ("/v1/openrlhf", b'{"query": ["a", "b"], "labels": ["1", NaN]}', "labels[1]"),
    ("/v1/openrlhf", b'{"query": ["a"], "labels": [{"answer": Infinity}]}', "labels[0].answer"),
    ("/v1/openrlhf", b'{"query": [NaN]}', "query[0]"),
    ("/get_reward", b'{"query": ["a"], "prompts": [Infinity]}', "prompts[0]"),
    ("/get_reward", b'{"query": ["a"], "stop_reason": NaN}', "stop_reason"),  # ignored fields too
])
def test_non_finite_numbers_get_422_naming_the_field(url, path, body, field):
    for ctype in ("application/json", None):
        headers = {**AUTH, **({"content-type": ctype} if ctype else {})}
        r = httpx.post(url + path, content=body, headers=headers)
        assert r.status_code == 422, r.text[:300]
        assert f"field {field}:" in _strict(r.text)["detail"]


def test_non_finite_scores_become_item_errors_in_valid_json(test_plugins):
    cfg = ServiceConfig(plugins=["nonfinite"], scorers={"nonfinite": {}}, openrlhf_scorer="nonfinite")
    with serve(build_app(cfg, TOKEN)) as u:
        r = post(u, "/v1/score", {"scorer": "nonfinite", "items": [{"completion": "x"}] * 4})
        assert r.status_code == 200
        res = _strict(r.text)["results"]
        assert [x["status"] for x in res] == ["error", "error", "error", "ok"]
        assert [x["score"] for x in res] == [None, None, None, 1.0]
        assert "non-finite" in res[0]["details"]["reason"]
        r = post(u, "/v1/openrlhf", {"query": ["a", "b", "c", "d"]})
        out = _strict(r.text)
        assert r.status_code == 200 and out["rewards"] == [0.0, 0.0, 0.0, 1.0]
        assert out["extra_logs"]["reward_failed"] == [1.0, 1.0, 1.0, 0.0]


@pytest.fixture(scope="module")
def small_url():
    """A service with the smallest body limit and few items per request."""
    cfg = ServiceConfig(max_body_bytes=1024, max_items=4, scorers={"json_valid": {}}, openrlhf_scorer="json_valid")
    with serve(build_app(cfg, TOKEN)) as u:
        yield u


def _count(metrics_text: str, code: str) -> float:
    line = [x for x in metrics_text.splitlines() if x.startswith(f'reward_requests_total{{code="{code}",route="/v1/score"}}')]
    return float(line[0].split()[-1]) if line else 0.0


def test_client_splits_batches_the_service_refuses_as_too_large(small_url):
    """413 for the body (1024 bytes) and for max_items (4): the client halves until each request fits,
    and every item is scored, in order."""
    c = RewardClient(small_url, TOKEN, timeout_s=5)  # batch_size 256: far over both limits
    items = [Item("p", '{"k": "%s"}' % ("v" * 100) if i % 3 else "not json", None) for i in range(20)]
    before = _count(httpx.get(small_url + "/metrics", headers=AUTH).text, "413")
    res = c.score("json_valid", items)
    assert [r.status for r in res] == ["ok"] * 20
    assert [r.score for r in res] == [0.0 if i % 3 == 0 else 1.0 for i in range(20)]
    assert _count(httpx.get(small_url + "/metrics", headers=AUTH).text, "413") > before  # it did have to split


def test_an_item_too_large_alone_gets_an_error_naming_the_limit(small_url):
    c = RewardClient(small_url, TOKEN, timeout_s=5)
    items = [Item("p", "{}"), Item("p", "x" * 2000), Item("p", "[]")]
    res = c.score("json_valid", items)
    assert [r.score for r in res] == [1.0, None, 1.0]
    assert res[1].status == "error" and "max_body_bytes" in res[1].details["reason"]
    assert res[1].details["http_status"] == 413
    # the same through a remote scorer, both wire formats
    allow_destinations(["127.0.0.1"])
    os.environ["TEST_SMALL_TOKEN"] = TOKEN
    try:
        raypost = make_scorer("remote", url=small_url, scorer="json_valid", token_env="TEST_SMALL_TOKEN")
        openrlhf = make_scorer("remote", url=small_url + "/v1/openrlhf", protocol="openrlhf",
                               token_env="TEST_SMALL_TOKEN")
        for s in (raypost, openrlhf):
            res = s.score(items + [Item("p", '{"a": 1}')] * 6)
            assert [r.score for r in res] == [1.0, None, 1.0] + [1.0] * 6, s.protocol
            assert res[1].status == "error" and "max_body_bytes" in res[1].details["reason"]
    finally:
        del os.environ["TEST_SMALL_TOKEN"]


# ---- the command line and the Ray actor ----------------------------------------------------------------
def test_command_line_service_refuses_without_token_then_serves():
    env = {k: v for k, v in os.environ.items() if k != "REWARD_API_TOKEN"}
    cmd = [sys.executable, "-m", "rewards.server", "--host", "127.0.0.1", "--port", "0"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode != 0 and "REWARD_API_TOKEN" in r.stderr
    r = subprocess.run(cmd + ["max_itemz=3"], env={**env, "REWARD_API_TOKEN": TOKEN}, capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode != 0 and "max_items" in r.stderr  # a typo is named, with the fix
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "rewards.server", "--host", "127.0.0.1", "--port", str(port),
                             "max_items=2"], env={**env, "REWARD_API_TOKEN": TOKEN}, cwd=REPO)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if httpx.get(base + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        assert post(base, "/v1/score", {"scorer": "json_valid", "items": [{"completion": "{}"}] * 3}).status_code == 413
        r = post(base, "/v1/score", {"scorer": "json_valid", "items": [{"completion": "{}"}]})
        assert r.json()["results"][0]["score"] == 1.0
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_service_runs_as_a_ray_actor(ray_local):
    from rewards.ray_service import start_service

    svc = start_service(ServiceConfig(port=0, scorers={"exact_answer": {}}), TOKEN)
    try:
        base = ray_local.get(svc.url.remote(), timeout=120)
        c = RewardClient(base, TOKEN, timeout_s=10)
        assert [r.score for r in c.score("exact_answer", [Item("p", '{"answer": 4}', 4)])] == [1.0]
    finally:
        ray_local.get(svc.stop.remote())
        ray_local.kill(svc)
