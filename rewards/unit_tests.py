"""Unit-test reward for Python: run the completion's code, then the reference's tests, in the sandbox.

The program is one interpreter (``/usr/bin/python3 -I`` by default, standard library only) started in
:mod:`rewards.sandbox`. A small trusted harness runs first: it reads the job from stdin, sets the
per-process rlimits, then executes the solution and the tests in one namespace and reports each phase,
tagged with a per-run random nonce, on a private pipe. A verdict of ``pass`` needs the harness's own
"tests passed" report: a program that exits with status 0 before the asserts run (``sys.exit(0)``,
``os._exit(0)``) or that prints a fake success line does not pass.

Statuses and scores:
- ``pass`` 1.0 -- the tests ran to the end;
- ``fail`` 0.0 -- a test raised (AssertionError, or any exception while the tests ran);
- ``runtime_error`` 0.0 -- the solution did not compile or raised, exited before the tests finished, died
  of a signal or hit the memory / output limit;
- ``timeout`` 0.0 -- CPU or wall-clock limit;
- ``infra_error`` None -- the sandbox could not be built (never run unsandboxed: fail closed);
- ``error`` None -- the item itself is unusable (no test code, not strings, too long).

Limitation, stated: code in the same interpreter as the harness can, with deliberate introspection
(frames, ``gc``), find the nonce and forge a pass. The sandbox protects the host either way; defending
the reward against such targeted hacking needs the tests in a separate process, which cannot see the
solution's objects.
"""
from __future__ import annotations

import json
import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from rewards import sandbox
from rewards.base import ERROR, FAIL, INFRA_ERROR, PASS, RUNTIME_ERROR, TIMEOUT, Item, Result

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)

# Runs first inside the sandbox, before any untrusted line. Kept small and standard-library only.
HARNESS = r'''
import json, os, resource, sys, traceback
def _main():
    fd = int(sys.argv[1])
    job = json.loads(sys.stdin.buffer.read())
    nonce = job["nonce"]
    def report(event, **kw):
        kw.update(event=event, nonce=nonce)
        try:
            os.write(fd, (json.dumps(kw) + "\n").encode())
        except Exception:
            pass
    def leave(code):
        for s in (sys.stdout, sys.stderr):
            try:
                s.flush()
            except Exception:
                pass
        os._exit(code)
    lim = job["limits"]
    mb = 1 << 20
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1))
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_mb"] * mb, lim["memory_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["file_mb"] * mb, lim["file_mb"] * mb))
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["nofile"], lim["nofile"]))
    sys.stdin = open(os.devnull)
    try:
        tests = compile(job["tests"], "tests.py", "exec")
    except BaseException as e:
        report("tests_invalid", error=type(e).__name__, message=str(e)[:300])
        leave(2)
    report("start")
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    solution = job.pop("solution")
    del job
    try:
        exec(compile(solution, "solution.py", "exec"), ns)
    except SystemExit as e:
        report("exited_early", phase="solution", code=str(e.code)[:100])
        leave(4)
    except BaseException as e:
        report("solution_error", error=type(e).__name__, message=str(e)[:300],
               traceback="".join(traceback.format_exception(e))[-1500:])
        leave(3)
    report("solution_done")
    try:
        exec(tests, ns)
    except SystemExit as e:
        report("exited_early", phase="tests", code=str(e.code)[:100])
        leave(4)
    except BaseException as e:
        report("test_failed", error=type(e).__name__, message=str(e)[:300],
               traceback="".join(traceback.format_exception(e))[-1500:])
        leave(1)
    report("tests_passed")
    leave(0)
_main()
'''


def extract_code(completion: str, block: str = "first") -> str:
    """The completion's ``first`` (or ``last``) fenced Python code block, or the whole completion."""
    blocks = _FENCE.findall(completion)
    if not blocks:
        return completion
    return blocks[0] if block == "first" else blocks[-1]


def verdict(run: sandbox.Run, nonce: str, limits: sandbox.Limits) -> tuple[str, dict]:
    """Status and details of one sandboxed run, from the harness's nonce-tagged reports and the exit."""
    events = []
    for line in run.channel.decode(errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("nonce") == nonce:
            ev.pop("nonce")
            events.append(ev)
    names = [e.get("event") for e in events]
    details = {"exit_code": run.exit_code, "wall_s": round(run.wall_s, 3),
               "stdout": run.stdout[-2000:].decode(errors="replace"),
               "stderr": run.stderr[-2000:].decode(errors="replace"), "events": names}
    if run.notes:
        details["notes"] = run.notes
    last = events[-1] if events else {}
    for k in ("error", "message", "traceback", "phase", "code"):
        if k in last:
            details[k] = last[k]
    if "tests_invalid" in names:
        return ERROR, {**details, "reason": "the reference's test code does not compile"}
    if "start" not in names:
        if run.wall_timeout:
            return TIMEOUT, {**details, "reason": "wall-clock limit before the program started"}
        return INFRA_ERROR, {**details, "reason": "the sandbox did not start the program"}
    if run.output_exceeded:
        return RUNTIME_ERROR, {**details, "reason": f"output limit of {limits.output_bytes} bytes exceeded"}
    if "tests_passed" in names:
        return PASS, details
    if "test_failed" in names:
        return FAIL, {**details, "reason": "a test failed"}
    if run.memory_limit_hit:
        # Before the wall clock: the cgroup's OOM killer may take only some of the tree (a forked child)
        # and leave the rest sleeping into the wall-clock limit; the program still broke its memory limit.
        return RUNTIME_ERROR, {**details, "reason": "memory limit"}
    if run.wall_timeout:
        return TIMEOUT, {**details, "reason": f"wall-clock limit of {limits.wall_s:g} s"}
    if run.signal in (24, 9) and "solution_error" not in names:
        # SIGXCPU at the soft CPU limit, SIGKILL at the hard one
        return TIMEOUT, {**details, "reason": f"CPU limit of {limits.cpu_s} s"}
    if "exited_early" in names or "solution_error" in names:
        reason = "exited before the tests finished" if "exited_early" in names else "the solution raised"
        return RUNTIME_ERROR, {**details, "reason": reason}
    return RUNTIME_ERROR, {**details, "reason": "the program ended before the tests finished"
                                                 + (f" (signal {run.signal})" if run.signal else "")}


@dataclass
class PythonUnitTestScorer:
    """1.0 if the completion's code passes the reference's tests in the sandbox (see module docstring).

    Options: ``python`` (interpreter inside the sandbox), ``extra_ro`` (more read-only paths, e.g. a
    virtualenv with numpy), ``block`` ("first" | "last" fenced block), ``workers`` (sandboxes at once),
    ``max_code_chars``, and the limits ``cpu_s``, ``wall_s``, ``memory_mb``, ``tmp_mb``, ``output_bytes``,
    ``pids``, ``nofile``, ``file_mb`` (see :class:`rewards.sandbox.Limits`).
    """

    python: str = "/usr/bin/python3"
    extra_ro: list = field(default_factory=list)
    block: str = "first"
    workers: int = 2
    max_code_chars: int = 65536
    cpu_s: int = 5
    wall_s: float = 10.0
    memory_mb: int = 512
    tmp_mb: int = 16
    output_bytes: int = 1 << 20
    pids: int = 32
    nofile: int = 64
    file_mb: int = 16
    name: str = "python_unit_tests"
    supports_deadline = True

    def __post_init__(self):
        if self.block not in ("first", "last"):
            raise ValueError(f"python_unit_tests option block={self.block!r}: use 'first' or 'last'")
        if self.workers < 1:
            raise ValueError("python_unit_tests option workers must be >= 1")
        self.limits = sandbox.Limits(self.cpu_s, self.wall_s, self.memory_mb, self.tmp_mb, self.output_bytes,
                                     self.pids, self.nofile, self.file_mb)
        self._slots = threading.BoundedSemaphore(self.workers)

    def score(self, items: list[Item], deadline: float | None = None) -> list[Result]:
        with ThreadPoolExecutor(max_workers=min(self.workers, max(1, len(items)))) as pool:
            return list(pool.map(lambda it: self._one(it, deadline), items))

    def _one(self, item: Item, deadline: float | None) -> Result:
        if not isinstance(item.completion, str):
            return Result(None, ERROR, {"reason": "completion is not a string"})
        if not isinstance(item.reference, str) or not item.reference.strip():
            return Result(None, ERROR, {"reason": "reference must be Python test code (e.g. asserts) as a string"})
        code = extract_code(item.completion, self.block)
        if len(code) + len(item.reference) > self.max_code_chars:
            return Result(None, ERROR, {"reason": f"code plus tests longer than max_code_chars={self.max_code_chars}"})
        with self._slots:
            if deadline is not None and time.monotonic() >= deadline - 0.05:
                return Result(None, TIMEOUT, {"reason": "deadline passed before the program could run"})
            nonce = secrets.token_hex(16)
            job = json.dumps({"nonce": nonce, "solution": code, "tests": item.reference,
                              "limits": {"cpu_s": self.limits.cpu_s, "memory_mb": self.limits.memory_mb,
                                         "file_mb": self.limits.file_mb, "nofile": self.limits.nofile}}).encode()
            try:
                run = sandbox.run([self.python, "-I", "-c", HARNESS, "{channel_fd}"], job, self.limits,
                                  extra_ro=self.extra_ro, deadline=deadline)
            except sandbox.SandboxUnavailable as e:
                return Result(None, INFRA_ERROR, {"reason": f"sandbox unavailable, code not run: {e}"})
            except OSError as e:
                return Result(None, INFRA_ERROR, {"reason": f"sandbox failed to start, code not run: {e}"})
        status, details = verdict(run, nonce, self.limits)
        if status == TIMEOUT and deadline is not None and time.monotonic() >= deadline - 0.01 \
                and run.wall_s < self.limits.wall_s - 0.05:
            # cut short by the caller's deadline, not by the program's own wall limit: no verdict
            return Result(None, TIMEOUT, {**details, "reason": "request deadline reached while the program ran"})
        score = {PASS: 1.0, FAIL: 0.0, RUNTIME_ERROR: 0.0, TIMEOUT: 0.0}.get(status)
        return Result(score, status, details)
