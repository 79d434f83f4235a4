"""The REST reward service: ``python -m rewards.server --host H --port P [--config service.yaml] [key=value ...]``.

Routes (all but ``/healthz`` need ``Authorization: Bearer $REWARD_API_TOKEN``):
- ``POST /v1/score`` ``{"scorer", "items": [{"prompt", "completion", "reference"}], "deadline_s"?}`` ->
  ``{"results": [{"score", "status", "details"}]}``, one per item, in order;
- ``POST /v1/openrlhf`` (alias ``/get_reward``): OpenRLHF's remote-reward JSON ``{query, prompts, labels}`` ->
  ``{rewards, scores, extra_logs}``;
- ``GET /v1/scorers`` (served scorers, limits, sandbox state), ``GET /metrics`` (Prometheus),
  ``GET /docs`` and ``/openapi.json``; ``GET /healthz`` (no auth, says nothing but "ok").

Bounds: request body (413 before parsing), batch size (413), per-item length (that item: status error),
a per-request deadline (unfinished items: status timeout), a concurrency limit (429 + Retry-After, no
queue). A request names a scorer from the operator's list; nothing it names is imported, run or fetched.
A body with a non-finite number (``NaN``, ``Infinity``, ``1e999``: Python's JSON parser takes them) gets
422 naming the field; a scorer's non-finite score becomes that item's status error.

Scorers run in worker processes (:class:`rewards.deadline.ScorerPool`, one per concurrency slot): a run
that overruns its deadline has its process killed, and its slot is free again only once the work is gone.
"""
from __future__ import annotations

import argparse
import hmac
import json
import logging
import math
import os
import sys
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from rewards.base import ERROR, Item, Result
from rewards.deadline import ScorerPool
from rewards.registry import enable_plugins, make_scorer
from rewards.remote import allow_destinations
from rewards.service_config import ServiceConfig

log = logging.getLogger("rewards.server")
OPEN_PATHS = frozenset({"/healthz"})


# ---- wire format ---------------------------------------------------------------------------------------
class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = ""
    completion: str
    reference: Any = None


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scorer: str = Field(max_length=200, description="one of the served scorers (GET /v1/scorers)")
    items: list[ItemIn]
    deadline_s: float | None = Field(default=None, gt=0, description="at most the service's own deadline")


class ResultOut(BaseModel):
    score: float | None
    status: str
    details: dict


class ScoreResponse(BaseModel):
    results: list[ResultOut]


class OpenRLHFRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenRLHF forks send extra fields (templates, stop_reason)
    query: list[str]
    prompts: list[str] | None = None
    labels: list[Any] | None = None


class OpenRLHFResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


def non_finite_field(doc) -> str | None:
    """Path (``items[0].reference``) of the first non-finite float in a parsed JSON document, or None."""
    stack = [(doc, "")]
    while stack:  # iterative: a deep but parseable document must not hit the recursion limit here
        x, path = stack.pop()
        if isinstance(x, float) and not math.isfinite(x):
            return path or "(the body)"
        if isinstance(x, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in reversed(list(x.items())))
        elif isinstance(x, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(x))))
    return None


def _jsonable(x, depth: int = 0):
    """Details from any scorer, made safe to send: JSON types only, finite numbers, bounded depth."""
    if depth > 20:
        return "..."
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in x]
    return str(x)[:1000]


# ---- guard: auth first, then the body limit (an unauthenticated body is never read) -------------------------
class Guard:
    def __init__(self, app, token: str, max_body: int, metrics: "ServiceMetrics"):
        self.app, self.token, self.max_body, self.metrics = app, token.encode(), max_body, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        code = 0  # the status the app (or this guard) answered; 0 when the client left first

        async def counting_send(message):
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            if path not in OPEN_PATHS and not self._authorised(scope):
                return await self._reply(counting_send, 401, "missing or wrong bearer token",
                                         [(b"www-authenticate", b'Bearer realm="rewards"')])
            headers = dict(scope["headers"])
            declared = headers.get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
                return await self._reply(counting_send, 413, f"request body over max_body_bytes={self.max_body}")
            body = bytearray()
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_body:
                    return await self._reply(counting_send, 413, f"request body over max_body_bytes={self.max_body}")
            bad = self._non_finite(headers, bytes(body))
            if bad:
                return await self._reply(counting_send, 422, bad)
            sent = False

            async def replay():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            await self.app(scope, replay, counting_send)
        finally:
            self.metrics.requests.labels(path if path in KNOWN_PATHS else "other", str(code)).inc()

    @staticmethod
    def _non_finite(headers: dict, body: bytes) -> str | None:
        """The message for a JSON body holding NaN / Infinity (or a number too large for a float), else None;
        bodies that do not parse are left to the app's own 422/400."""
        ctype = headers.get(b"content-type")
        if not body or (ctype is not None and b"json" not in ctype.lower()):  # FastAPI reads JSON without one too
            return None
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return None
        where = non_finite_field(doc)
        if where is None:
            return None
        return (f"field {where[:200]}: NaN and infinite numbers are not valid JSON numbers; send a finite number "
                f"(or null where the field allows it)")

    def _authorised(self, scope) -> bool:
        for k, v in scope["headers"]:
            if k == b"authorization":
                scheme, _, given = v.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)
        return False

    @staticmethod
    async def _reply(send, code: int, detail: str, extra_headers=()):
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": code,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *extra_headers]})
        await send({"type": "http.response.body", "body": body})


KNOWN_PATHS = frozenset({"/healthz", "/v1/score", "/v1/openrlhf", "/get_reward", "/v1/scorers", "/metrics", "/docs",
                         "/openapi.json", "/redoc"})


# ---- metrics ---------------------------------------------------------------------------------------------
class ServiceMetrics:
    """The service's Prometheus metrics, in a registry of their own (each app has one: a process may build several)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("reward_requests_total", "HTTP requests by route and status code", ["route", "code"],
                                registry=self.registry)
        self.items = Counter("reward_items_total", "Scored items by scorer and status", ["scorer", "status"],
                             registry=self.registry)
        self.seconds = Histogram("reward_score_seconds", "Time to score one request", ["scorer"],
                                 registry=self.registry)
        self.in_flight = Gauge("reward_requests_in_flight", "Requests being scored now", registry=self.registry)
        self.kills = Counter("reward_scorer_kills_total", "Scorer worker processes killed for overrunning the deadline",
                             registry=self.registry)
        self.workers = Gauge("reward_scorer_workers", "Scorer worker processes alive (idle or running)",
                             registry=self.registry)

    def watch(self, pool: ScorerPool) -> None:
        """Read the pool's live worker count at every scrape."""
        self.workers.set_function(lambda: len(pool.pids()))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# ---- the served scorers --------------------------------------------------------------------------------------
def check_scorers(cfg: ServiceConfig) -> tuple[dict[str, tuple[str, dict]], bool]:
    """``(specs, sandboxed)``: served name -> (registry name, options) for the pool's workers, and whether any
    served scorer runs code in the sandbox. Each scorer is built here once, to refuse a bad config at start;
    the scoring itself happens in the pool's workers, each of which builds its own copy (a hung scorer there
    can be killed, one here could not)."""
    specs, sandboxed = {}, False
    for name, opts in cfg.served().items():
        opts = dict(opts)
        base = opts.pop("scorer", name)
        try:
            built = make_scorer(base, **opts)
        except ValueError as e:
            raise SystemExit(f"service config scorers.{name}: {e}") from None
        sandboxed |= getattr(built, "supports_deadline", False) and hasattr(built, "limits")
        specs[name] = (base, opts)
        del built
    return specs, sandboxed


class Scoring:
    """What the routes share: the served scorers, the worker pool, the operator's bounds and the metrics."""

    def __init__(self, cfg: ServiceConfig, specs: dict, pool: ScorerPool, metrics: ServiceMetrics,
                 sandbox_state: str | None):
        self.cfg, self.specs, self.pool, self.metrics = cfg, specs, pool, metrics
        self.names = sorted(specs)
        self.sandbox_state = sandbox_state
        """None when the sandbox can run programs here, else why not (sandboxed scorers fail closed)."""

    def too_long(self, item: Item) -> bool:
        ref_len = len(json.dumps(item.reference)) if item.reference is not None else 0
        return max(len(item.prompt), len(item.completion), ref_len) > self.cfg.max_item_chars

    async def score(self, name: str, items: list[Item], deadline_s: float | None) -> list[Result]:
        """One result per item, in order: items over ``max_item_chars`` get status error, the rest go to a
        worker under ``min(cfg.deadline_s, deadline_s)``. 400 for a scorer not served, 413 for a batch over
        ``max_items``, 429 when every concurrency slot is busy."""
        cfg = self.cfg
        if name not in self.specs:
            raise HTTPException(400, f"unknown scorer {name[:100]!r}; served: {self.names}")
        if len(items) > cfg.max_items:
            raise HTTPException(413, f"batch of {len(items)} items over max_items={cfg.max_items}; send smaller batches")
        out: list[Result | None] = [None] * len(items)
        todo = []
        for i, it in enumerate(items):
            if self.too_long(it):
                out[i] = Result(None, ERROR, {"reason": f"item longer than max_item_chars={cfg.max_item_chars}"})
            else:
                todo.append(i)
        timeout = min(cfg.deadline_s, deadline_s or math.inf)
        lease = self.pool.lease()
        if lease is None:
            raise HTTPException(429, f"{cfg.max_concurrency} requests are being scored; retry shortly",
                                headers={"Retry-After": "1"})
        self.metrics.in_flight.inc()
        t0 = time.monotonic()
        try:
            # the lease frees its slot itself, in the worker thread, once the run has really ended
            done = await run_in_threadpool(lease.run, name, [items[i] for i in todo], timeout)
        finally:
            lease.release()  # only if the run never started
            self.metrics.in_flight.dec()
            self.metrics.seconds.labels(name).observe(time.monotonic() - t0)
        for i, r in zip(todo, done):
            out[i] = r
        for r in out:
            self.metrics.items.labels(name, r.status).inc()
        return out


# ---- routes (each reads the app's Scoring from request.app.state.scoring) ------------------------------------
routes = APIRouter()


@routes.get("/healthz", summary="Liveness (no auth)")
def healthz():
    return {"status": "ok"}


@routes.get("/v1/scorers", summary="Served scorers, limits and sandbox state")
def list_scorers(request: Request):
    s: Scoring = request.app.state.scoring
    cfg = s.cfg
    return {"scorers": s.names, "openrlhf_scorer": cfg.openrlhf_scorer,
            "limits": {"max_body_bytes": cfg.max_body_bytes, "max_items": cfg.max_items,
                       "max_item_chars": cfg.max_item_chars, "deadline_s": cfg.deadline_s,
                       "max_concurrency": cfg.max_concurrency},
            "workers": {"busy": s.pool.busy(), "alive": len(s.pool.pids()), "killed": s.pool.killed},
            "sandbox": "ok" if s.sandbox_state is None else s.sandbox_state}


@routes.post("/v1/score", response_model=ScoreResponse, summary="Score a batch with one scorer")
async def score(req: ScoreRequest, request: Request):
    items = [Item(it.prompt, it.completion, it.reference) for it in req.items]
    results = await request.app.state.scoring.score(req.scorer, items, req.deadline_s)
    return {"results": [{"score": r.score, "status": r.status, "details": _jsonable(r.details)} for r in results]}


async def openrlhf(req: OpenRLHFRequest, request: Request):
    s: Scoring = request.app.state.scoring
    if s.cfg.openrlhf_scorer not in s.specs:
        raise HTTPException(503, f"openrlhf_scorer {s.cfg.openrlhf_scorer!r} is not among the served scorers")
    n = len(req.query)
    for field_name, values in (("prompts", req.prompts), ("labels", req.labels)):
        if values is not None and len(values) != n:
            raise HTTPException(422, f"'{field_name}' has {len(values)} entries for {n} queries")
    prompts = req.prompts or [""] * n
    labels = req.labels or [None] * n
    # OpenRLHF's query is prompt + response: the completion is what follows the prompt
    items = [Item(p, q[len(p):] if p and q.startswith(p) else q, lab) for q, p, lab in zip(req.query, prompts, labels)]
    results = await s.score(s.cfg.openrlhf_scorer, items, None)
    rewards = [r.score if r.score is not None else 0.0 for r in results]
    return {"rewards": rewards, "scores": rewards,
            "extra_logs": {"reward_failed": [0.0 if r.score is not None else 1.0 for r in results]}}


routes.add_api_route("/v1/openrlhf", openrlhf, methods=["POST"], response_model=OpenRLHFResponse,
                     summary="OpenRLHF remote-reward JSON")
routes.add_api_route("/get_reward", openrlhf, methods=["POST"], response_model=OpenRLHFResponse,
                     include_in_schema=False)


@routes.get("/metrics", summary="Prometheus metrics")
def prometheus(request: Request):
    return Response(request.app.state.scoring.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


# ---- the app -------------------------------------------------------------------------------------------------
def build_app(cfg: ServiceConfig, token: str | None = None) -> FastAPI:
    """The FastAPI app for ``cfg``; ``token`` defaults to the variable ``cfg.token_env`` (required)."""
    token = token if token is not None else os.environ.get(cfg.token_env, "")
    if not token:
        raise SystemExit(f"refusing to start without a token: set {cfg.token_env} (the bearer token clients send)")
    enable_plugins(cfg.plugins)
    allow_destinations(cfg.remote_allow)
    specs, sandboxed = check_scorers(cfg)
    sandbox_state = None
    if sandboxed:
        from rewards.sandbox import sandbox_problem

        sandbox_state = sandbox_problem()
        if sandbox_state:
            log.warning("unit-test scorer will answer infra_error (fail closed): %s", sandbox_state)
    if cfg.openrlhf_scorer not in specs:
        log.warning("openrlhf_scorer %r is not served; /v1/openrlhf will answer 503", cfg.openrlhf_scorer)

    metrics = ServiceMetrics()
    pool = ScorerPool(specs, cfg.max_concurrency, cfg.plugins, cfg.remote_allow, on_kill=metrics.kills.inc)
    metrics.watch(pool)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        pool.close()

    app = FastAPI(title="raypost reward service", version="1", lifespan=lifespan,
                  description="Scores (prompt, completion) batches. Every route but /healthz needs a bearer token.")
    app.include_router(routes)
    app.state.scoring = Scoring(cfg, specs, pool, metrics, sandbox_state)
    app.state.cfg, app.state.scorers, app.state.pool = cfg, app.state.scoring.names, pool
    app.add_middleware(Guard, token=token, max_body=cfg.max_body_bytes, metrics=metrics)
    return app


def parse_args(argv: list[str]) -> ServiceConfig:
    from config.loader import ConfigError, load

    p = argparse.ArgumentParser(prog="python -m rewards.server", description=__doc__.split("\n\n")[0])
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--config", help="YAML file with ServiceConfig fields (rewards/service_config.py)")
    args, rest = p.parse_known_args(argv)
    over = list(rest)
    if args.host:
        over.append(f"host={args.host}")
    if args.port is not None:
        over.append(f"port={args.port}")
    try:
        return load(ServiceConfig, args.config, over)
    except ConfigError as e:
        raise SystemExit(f"reward service config: {e}") from None


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    app = build_app(cfg)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_keep_alive=5)


if __name__ == "__main__":
    main()
