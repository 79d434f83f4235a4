"""Run one scorer on a batch under a deadline, so that nothing it does can take the batch down.

Whatever happens -- the scorer raises, returns the wrong number of results, returns NaN, or runs past
the deadline -- every item gets a :class:`Result`. Scorers that can stop early on their own (the
sandbox, the reward model) say so with ``supports_deadline = True`` and receive the absolute deadline
(``time.monotonic()`` seconds) so that the items they finished keep their verdicts.

Two ways to run: :func:`run_scorer` on a thread of this process (a scorer stuck past its deadline is
abandoned, and its thread runs on: fine for a trainer's own scorers, not for a service that promises a
bound on its work), and :class:`ScorerPool`, worker processes that are killed when they overrun (the
REST service's way: a slot of the pool is free only once the work in it has really ended).
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import threading
import time

from rewards.base import ERROR, STATUSES, TIMEOUT, Item, Result, Scorer

# How long past the deadline a deadline-aware scorer may take to hand back what it has.
GRACE_S = 2.0


def _clean(result, name: str) -> Result:
    if not isinstance(result, Result):
        return Result(None, ERROR, {"reason": f"scorer {name!r} returned {type(result).__name__}, not Result"})
    score = result.score
    if score is not None:
        try:
            score = float(score)
        except (TypeError, ValueError):
            return Result(None, ERROR, {"reason": f"scorer {name!r} returned a non-numeric score"})
        if not math.isfinite(score):
            return Result(None, ERROR, {"reason": f"scorer {name!r} returned a non-finite score {score}"})
    status = result.status if result.status in STATUSES else ERROR
    details = result.details if isinstance(result.details, dict) else {"details": str(result.details)[:500]}
    return Result(score, status, details)


def run_scorer(scorer: Scorer, items: list[Item], timeout_s: float) -> list[Result]:
    """``scorer.score(items)`` with a deadline ``timeout_s`` from now; never raises."""
    name = getattr(scorer, "name", type(scorer).__name__)
    if not items:
        return []
    deadline = time.monotonic() + timeout_s
    box: dict = {}

    def work():
        try:
            if getattr(scorer, "supports_deadline", False):
                box["out"] = scorer.score(items, deadline=deadline)
            else:
                box["out"] = scorer.score(items)
        except BaseException as e:  # noqa: BLE001 -- a plugin's failure must not escape into the batch
            box["err"] = f"{type(e).__name__}: {e}"[:500]

    # A daemon thread: a scorer stuck past its deadline is abandoned, not waited for at exit.
    t = threading.Thread(target=work, name=f"score-{name}", daemon=True)
    t.start()
    t.join(timeout_s + (GRACE_S if getattr(scorer, "supports_deadline", False) else 0.0))
    if t.is_alive():
        return [Result(None, TIMEOUT, {"reason": f"scorer {name!r} did not finish within {timeout_s:g} s"})
                for _ in items]
    if "err" in box:
        return [Result(None, ERROR, {"reason": f"scorer {name!r} raised {box['err']}"}) for _ in items]
    return _checked(box.get("out"), len(items), name)


def _checked(out, n_items: int, name: str) -> list[Result]:
    if not isinstance(out, list) or len(out) != n_items:
        n = len(out) if isinstance(out, list) else type(out).__name__
        return [Result(None, ERROR, {"reason": f"scorer {name!r} returned {n} results for {n_items} items"})
                for _ in range(n_items)]
    return [_clean(r, name) for r in out]


# ---- worker processes: the service's way --------------------------------------------------------------
# How long a new worker may take to import and build its scorers (a reward model loads its weights); not
# charged to the deadline of the request that waits for it.
START_TIMEOUT_S = 120.0


class WorkerFailed(RuntimeError):
    """A worker process could not start or build its scorers; the message says why."""


def _worker_main(conn, specs: dict, plugins: list, remote_allow: list) -> None:
    """A worker process: build the served scorers once, then answer jobs ``(name, items, deadline)`` until EOF."""
    os.setsid()  # its own process group: a kill takes whatever the scorer started in it too
    parent = os.getppid()

    def orphaned():  # the service died (even by SIGKILL): a hung scorer must not run on without it
        while os.getppid() == parent:
            time.sleep(1.0)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=orphaned, name="reward-scorer-watch", daemon=True).start()
    try:
        from rewards.registry import enable_plugins, make_scorer
        from rewards.remote import allow_destinations

        enable_plugins(plugins)
        allow_destinations(remote_allow)
        scorers = {name: make_scorer(base, **opts) for name, (base, opts) in specs.items()}
    except BaseException as e:  # noqa: BLE001 -- reported to the pool, which names it in every item
        conn.send(("fatal", f"{type(e).__name__}: {e}"[:500]))
        return
    conn.send(("ready", {n: bool(getattr(s, "supports_deadline", False)) for n, s in scorers.items()}))
    baseline = set(threading.enumerate())
    while True:
        try:
            name, items, deadline = conn.recv()
        except (EOFError, OSError):
            return
        scorer = scorers[name]
        try:
            if getattr(scorer, "supports_deadline", False):
                out = scorer.score(items, deadline=deadline)
            else:
                out = scorer.score(items)
            results = _checked(out, len(items), name)
        except BaseException as e:  # noqa: BLE001 -- a plugin's failure must not escape into the batch
            results = [Result(None, ERROR, {"reason": f"scorer {name!r} raised {type(e).__name__}: {e}"[:500]})
                       for _ in items]
        # A scorer that left threads running (e.g. a composite whose component overran) still has work in
        # this process: say so, and the pool ends the process rather than count its slot free.
        leftover = any(t.is_alive() for t in threading.enumerate() if t not in baseline)
        conn.send(("done", [Result(r.score, r.status, _plain(r.details)) for r in results], leftover))


def _plain(details: dict) -> dict:
    """``details`` as JSON types only, so that nothing a plugin put there is unpickled in the service."""
    try:
        return json.loads(json.dumps(details, default=lambda o: str(o)[:1000]))
    except (ValueError, TypeError, RecursionError) as e:  # a cycle, or too deep
        return {"reason": f"details could not be sent: {type(e).__name__}"}


class _Worker:
    def __init__(self, ctx, args):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, *args), name="reward-scorer", daemon=True)
        self.proc.start()
        child.close()
        self.deadline_aware: dict[str, bool] = {}

    def wait_ready(self, timeout_s: float) -> None:
        try:
            if not self.conn.poll(timeout_s):
                raise WorkerFailed(f"scorer worker did not start within {timeout_s:g} s")
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            raise WorkerFailed(f"scorer worker exited while starting (exit code {self.proc.exitcode})") from None
        if kind != "ready":
            raise WorkerFailed(f"scorer worker could not build its scorers: {payload}")
        self.deadline_aware = payload

    def kill(self) -> None:
        """SIGKILL the worker's process group (the worker and what it started), then reap the worker."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # not yet its own group leader
            pass
        self.proc.kill()
        self.proc.join()
        self.conn.close()


class ScorerPool:
    """At most ``size`` scorer runs at once, each in a worker process that is killed when it overruns.

    ``specs`` maps a served name to ``(base scorer, options)``; every worker builds all of them once, at its
    start (in a fresh interpreter: ``spawn``). :meth:`lease` takes one of the ``size`` slots, or returns None
    when all are taken (the service answers "busy"); :meth:`Lease.run` scores, and the slot comes back only
    when the run has ended: answered, or its worker's process group killed and the worker reaped. So
    :meth:`busy` counts work that is really running, and a scorer that hangs costs one kill and one
    worker start, never a thread that runs on beside the cap.
    """

    def __init__(self, specs: dict[str, tuple[str, dict]], size: int, plugins=(), remote_allow=(),
                 grace_s: float = GRACE_S, start_timeout_s: float = START_TIMEOUT_S, on_kill=None):
        self.size, self.grace_s, self.start_timeout_s = size, grace_s, start_timeout_s
        self._on_kill = on_kill  # called once per worker killed for overrunning (e.g. a metric's inc)
        self._args = ({n: (b, dict(o)) for n, (b, o) in specs.items()}, list(plugins), list(remote_allow))
        self._ctx = multiprocessing.get_context("spawn")  # the service has threads: forking it is not safe
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._running: set[_Worker] = set()
        self._taken = 0
        self._closed = False
        self.killed = 0

    def lease(self) -> Lease | None:
        with self._lock:
            if self._closed or self._taken >= self.size:
                return None
            self._taken += 1
            return Lease(self)

    def busy(self) -> int:
        """Slots taken: runs not yet ended (answered, or killed and reaped)."""
        return self._taken

    def pids(self) -> list[int]:
        """Worker processes alive now, idle or running."""
        with self._lock:
            return [w.proc.pid for w in self._idle + list(self._running) if w.proc.is_alive()]

    def close(self) -> None:
        """Kill the idle workers now; running ones are killed when their run ends."""
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, []
        for w in idle:
            w.kill()

    def _worker(self) -> _Worker:
        with self._lock:
            while self._idle:
                w = self._idle.pop()
                if w.proc.is_alive():
                    self._running.add(w)
                    return w
                w.kill()  # died while idle (e.g. the OOM killer): reap it, take another
        w = _Worker(self._ctx, self._args)
        with self._lock:
            self._running.add(w)
        try:
            w.wait_ready(self.start_timeout_s)
        except WorkerFailed:
            self._end(w)
            raise
        return w

    def _end(self, w: _Worker) -> None:
        w.kill()
        with self._lock:
            self._running.discard(w)

    def _run(self, name: str, items: list[Item], timeout_s: float) -> list[Result]:
        w = None
        try:
            if not items:
                return []
            try:
                w = self._worker()
            except WorkerFailed as e:
                return [Result(None, ERROR, {"reason": str(e)}) for _ in items]
            deadline = time.monotonic() + timeout_s  # CLOCK_MONOTONIC: the same clock in the worker
            try:
                w.conn.send((name, items, deadline))
                if not w.conn.poll(timeout_s + (self.grace_s if w.deadline_aware.get(name) else 0.0)):
                    self._end(w)
                    w = None
                    with self._lock:
                        self.killed += 1
                    if self._on_kill:
                        self._on_kill()
                    return [Result(None, TIMEOUT, {"reason": f"scorer {name!r} did not finish within {timeout_s:g} s"})
                            for _ in items]
                _, results, leftover = w.conn.recv()
            except (EOFError, OSError) as e:  # the worker died under the scorer (a crash, the OOM killer)
                self._end(w)
                code, w = w.proc.exitcode, None
                return [Result(None, ERROR, {"reason": f"scorer {name!r} crashed its worker process (exit code "
                                                       f"{code}; {type(e).__name__})"}) for _ in items]
            if leftover:
                self._end(w)
                w = None
            return results
        finally:
            with self._lock:
                self._taken -= 1
                if w is not None:
                    self._running.discard(w)
                    if self._closed:
                        w.kill()
                    else:
                        self._idle.append(w)


class Lease:
    """One slot of a :class:`ScorerPool`: :meth:`run` once (it frees the slot when the run has ended), or
    :meth:`release` if the run never starts."""

    def __init__(self, pool: ScorerPool):
        self._pool, self._used = pool, False

    def run(self, name: str, items: list[Item], timeout_s: float) -> list[Result]:
        if self._used:
            raise RuntimeError("a lease runs once")
        self._used = True
        return self._pool._run(name, items, timeout_s)

    def release(self) -> None:
        if not self._used:
            self._used = True
            with self._pool._lock:
                self._pool._taken -= 1
