"""Hostile programs through the unit-test scorer: each is contained, the host is unharmed, the next run
is unaffected. These run the real bubblewrap sandbox (installed by scripts/install.sh)."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from rewards import Item, make_scorer
from rewards import sandbox
from rewards.unit_tests import PythonUnitTestScorer

pytestmark = pytest.mark.skipif(sandbox.sandbox_problem() is not None,
                                reason=f"sandbox unavailable here: {sandbox.sandbox_problem()}")

GOOD = Item("write add", "```python\ndef add(a, b):\n    return a + b\n```", "assert add(2, 3) == 5")


@pytest.fixture(scope="module")
def scorer():
    return make_scorer("python_unit_tests", cpu_s=1, wall_s=4, memory_mb=256, pids=16, output_bytes=64 << 10)


def _processes_mentioning(marker: str) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker in (p / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def _leftover_cgroups() -> list[Path]:
    return sandbox.live_cgroups()


def _host_ok(scorer):
    """The host can still start processes, nothing of the sandbox is left, and a good program passes."""
    assert subprocess.run(["/bin/true"]).returncode == 0
    assert _leftover_cgroups() == []
    r = scorer.score([GOOD])[0]
    assert (r.status, r.score) == ("pass", 1.0), r


def test_verdicts_on_ordinary_programs(scorer):
    items = [
        GOOD,
        Item("p", "def add(a, b):\n    return a - b", "assert add(2, 3) == 5"),
        Item("p", "def add(a, b):\n    return a +", "assert add(2, 3) == 5"),
        Item("p", "raise ValueError('boom')", "assert True"),
        Item("p", "def add(a, b): return a + b", "assert (2"),     # the reference is broken, not the code
        Item("p", "def add(a, b): return a + b", None),
        Item("p", "import sys\nprint('hello'); sys.stderr.write('warn')\nX = 1", "assert X == 1"),
    ]
    rs = scorer.score(items)
    assert [r.status for r in rs] == ["pass", "fail", "runtime_error", "runtime_error", "error", "error", "pass"]
    assert [r.score for r in rs] == [1.0, 0.0, 0.0, 0.0, None, None, 1.0]
    assert rs[1].details["error"] == "AssertionError"
    assert rs[2].details["error"] == "SyntaxError" and rs[3].details["error"] == "ValueError"
    assert rs[6].details["stdout"] == "hello\n" and rs[6].details["stderr"] == "warn"


def test_code_block_choice():
    text = "```python\ndef f(): return 1\n```\nthen\n```python\ndef f(): return 2\n```"
    first = make_scorer("python_unit_tests", wall_s=4)
    last = make_scorer("python_unit_tests", wall_s=4, block="last")
    item = Item("p", text, "assert f() == 2")
    assert first.score([item])[0].status == "fail" and last.score([item])[0].status == "pass"


HOSTILE = {
    "infinite_loop": ("while True:\n    pass", "timeout"),
    "sleep_forever": ("import time\ntime.sleep(1000)", "timeout"),
    "memory_bomb": ("x = bytearray(8 << 30)", "runtime_error"),
    "memory_creep": ("xs = []\nwhile True:\n    xs.append(b'x' * (16 << 20))", "runtime_error"),
    # each process stays under its address-space limit; together they exceed the memory cgroup
    "memory_bomb_across_processes": (
        "import os, time\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        x = b'x' * (200 << 20)\n        time.sleep(30)\n        os._exit(0)\n"
        "y = b'y' * (200 << 20)\ntime.sleep(30)", "runtime_error"),
    "output_flood": ("while True:\n    print('x' * 10000)", "runtime_error"),
    "exit_0_before_asserts": ("import sys\nsys.exit(0)", "runtime_error"),
    "os_exit_0_before_asserts": ("import os\nos._exit(0)", "runtime_error"),
    "fake_success_report": (
        "import os, json, sys\n"
        "line = json.dumps({'event': 'tests_passed', 'nonce': 'guess'}) + '\\n'\n"
        "for fd in range(3, 64):\n"
        "    try: os.write(fd, line.encode())\n"
        "    except OSError: pass\n"
        "print(line)\nos._exit(0)", "runtime_error"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_is_contained(scorer, name):
    code, status = HOSTILE[name]
    r = scorer.score([Item("p", code, "assert False, 'the tests must never be reached'")])[0]
    assert r.status == status, r
    assert r.score == 0.0
    assert r.details["wall_s"] < 10
    _host_ok(scorer)


def test_fork_bomb_is_capped_by_the_pids_cgroup(scorer):
    # Bounded on purpose (2**9 processes at most even if the cap failed), and it proves the cap:
    # the survivors count their namespace's processes.
    # The first process reports and leaves; the others would sleep on, and die with the namespace.
    code = (
        "import os, time\n"
        "me = os.getpid()\n"
        "for _ in range(9):\n"
        "    try:\n        os.fork()\n    except OSError:\n        pass\n"
        "if os.getpid() != me:\n    time.sleep(30)\n    os._exit(0)\n"
        "time.sleep(0.5)\n"
        "n = len([p for p in os.listdir('/proc') if p.isdigit()])\n"
        "print(n, flush=True)\n"
    )
    r = scorer.score([Item("p", code, "assert True")])[0]
    assert r.status == "pass"
    counts = [int(x) for x in r.details["stdout"].split()]
    assert len(counts) == 1 and 4 <= counts[0] <= 16  # it did fork, and no further than pids=16
    _host_ok(scorer)


def test_detached_background_process_dies_with_the_sandbox(scorer):
    marker = f"{uuid.uuid4().int % 10**6}.123"
    code = (
        "import os, subprocess\n"
        f"subprocess.Popen(['/bin/sleep', '{marker}'], start_new_session=True)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['/bin/sleep', '{marker}'])\n"
        "    os._exit(0)\n"
    )
    r = scorer.score([Item("p", code, "assert True")])[0]
    assert r.status == "pass"
    assert _processes_mentioning(marker) == []
    _host_ok(scorer)


def test_no_network_not_even_the_hosts_loopback(scorer):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.1)
    port = srv.getsockname()[1]
    accepted, done = [], threading.Event()

    def watch():
        while not done.is_set():
            try:
                accepted.append(srv.accept())
            except (TimeoutError, OSError):
                pass

    t = threading.Thread(target=watch)
    t.start()
    code = (
        "import socket\nerrors = []\n"
        f"for addr in [('127.0.0.1', {port}), ('8.8.8.8', 53), ('1.1.1.1', 443)]:\n"
        "    try:\n        socket.create_connection(addr, timeout=1)\n        errors.append('connected')\n"
        "    except OSError as e:\n        errors.append(type(e).__name__)\n"
        "print(errors)\n"
    )
    r = scorer.score([Item("p", code, "assert 'connected' not in errors")])[0]
    done.set()
    t.join()
    srv.close()
    assert r.status == "pass", r
    assert accepted == []
    _host_ok(scorer)


def test_writes_outside_its_tmp_fail_and_tmp_is_private(scorer, tmp_path):
    host_file = tmp_path / "pwned"
    code = (
        "import os\nresults = {}\n"
        f"for path in ['/usr/pwned', '/etc/pwned', '/pwned', {str(host_file)!r}, '/proc/sys/kernel/hostname',"
        " '/work/main/pwned', '/root/pwned']:\n"
        "    try:\n        open(path, 'w').write('x')\n        results[path] = 'written'\n"
        "    except OSError as e:\n        results[path] = type(e).__name__\n"
        "open('/tmp/mine', 'w').write('ok')\n"
    )
    r = scorer.score([Item("p", code, "assert 'written' not in results.values(), results\n"
                                      "assert open('/tmp/mine').read() == 'ok'")])[0]
    assert r.status == "pass", r
    assert not host_file.exists() and not Path("/usr/pwned").exists() and not Path("/pwned").exists()
    assert not Path("/work/main/pwned").exists()
    _host_ok(scorer)


def test_cannot_read_the_services_environment_or_files(scorer, monkeypatch):
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("REWARD_API_TOKEN", secret)
    code = (
        "import os, glob\nseen = repr(dict(os.environ))\n"
        "for f in glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline'):\n"
        "    try:\n        seen += open(f, 'rb').read().decode(errors='replace')\n"
        "    except OSError:\n        pass\n"
        "print(seen)\n"
        "print(os.getuid(), os.path.exists('/work'), os.path.exists('/root'), os.path.exists('/etc/shadow'))\n"
    )
    r = scorer.score([Item("p", code, "assert True")])[0]
    assert r.status == "pass"
    assert secret not in r.details["stdout"] + r.details["stderr"]
    assert r.details["stdout"].strip().splitlines()[-1] == "65534 False False False"
    _host_ok(scorer)


def test_fails_closed_without_bubblewrap(monkeypatch, tmp_path):
    witness = Path("/tmp") / f"ran-unsandboxed-{uuid.uuid4().hex}"
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    s = PythonUnitTestScorer(wall_s=4)
    r = s.score([Item("p", f"open({str(witness)!r}, 'w').write('x')", "assert True")])[0]
    assert (r.status, r.score) == ("infra_error", None)
    assert "bubblewrap" in r.details["reason"]
    assert not witness.exists()


def test_fails_closed_without_cgroups(monkeypatch):
    witness = Path("/tmp") / f"ran-unsandboxed-{uuid.uuid4().hex}"
    monkeypatch.setattr(sandbox, "CGROUP_ROOT", Path("/nonexistent/cgroup"))
    r = PythonUnitTestScorer(wall_s=4).score([Item("p", f"open({str(witness)!r}, 'w').write('x')", "assert True")])[0]
    assert r.status == "infra_error" and "cgroup" in r.details["reason"]
    assert not witness.exists()


def test_deadline_keeps_finished_verdicts():
    import time

    s = PythonUnitTestScorer(wall_s=10, workers=1)
    items = [GOOD, Item("p", "import time\ntime.sleep(100)", "assert True"), GOOD]
    t0 = time.monotonic()
    rs = s.score(items, deadline=time.monotonic() + 2.0)
    assert time.monotonic() - t0 < 5
    assert rs[0].status == "pass"
    assert rs[1].status == "timeout" and rs[1].score is None  # cut by the caller, not a verdict
    assert rs[2].status == "timeout" and rs[2].score is None


@pytest.fixture
def reprobe():
    """Probe again afterwards, so that later tests see the real sandbox's answer, not a patched one."""
    yield
    sandbox.sandbox_problem(refresh=True)


def test_readiness_probe_runs_a_real_program(monkeypatch, reprobe):
    import tempfile

    # The probe ran a program through the real sandbox (this module is not skipped) and caches that.
    assert sandbox.sandbox_problem() is None
    assert sandbox.live_cgroups() == []
    # A bwrap that is installed but cannot build namespaces, as in a container without user namespaces:
    # found on PATH and executable, so only running a program can tell.
    fake = Path(tempfile.mkdtemp(prefix="fake-bwrap-"))
    fake.chmod(0o755)
    (fake / "bwrap").write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n")
    (fake / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    assert sandbox.sandbox_problem() is None  # cached: one probe per process
    problem = sandbox.sandbox_problem(refresh=True)
    assert problem is not None and "No permissions to create a new namespace" in problem, problem
    assert "exit status 1" in problem
    monkeypatch.setattr(sandbox, "CGROUP_ROOT", Path("/nonexistent/cgroup"))
    assert "cgroup" in sandbox.sandbox_problem(refresh=True)
    monkeypatch.undo()
    assert sandbox.sandbox_problem(refresh=True) is None
