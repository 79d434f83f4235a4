"""Run an untrusted program inside an OS sandbox: bubblewrap namespaces + cgroups + rlimits, fail closed.

What the program gets:
- its own PID, network (loopback only, nothing routed), mount, IPC, UTS and user namespaces
  (``bwrap --unshare-all --unshare-user --disable-userns``), so it sees only its own processes, can reach
  no host or network socket and cannot nest namespaces;
- an unprivileged uid: the service drops to uid/gid 65534 *before* starting bwrap (when it runs as root),
  so even a namespace escape lands as nobody, and no capabilities (``--cap-drop ALL``);
- a read-only root holding only ``/usr`` (and its usual symlinks) plus operator-named read-only paths --
  not the host's ``/`` -- a private ``/tmp`` tmpfs of ``tmp_mb``, a fresh ``/proc`` and a minimal ``/dev``;
- a scrubbed environment (``--clearenv``; PATH/HOME/LANG set by us);
- limits: a pids cgroup (process count, which RLIMIT_NPROC cannot give: it ignores root and counts per uid
  across sandboxes), a memory cgroup (the whole tree, tmpfs included), per-process rlimits set by the
  program's first trusted lines (address space, CPU seconds, file size, open files, no core dumps),
  a wall clock enforced here, and a cap on stdout+stderr after which the sandbox is killed.

Killing: the sandbox runs in its own session; at the end (or at a limit) we SIGKILL bwrap, whose
``--die-with-parent`` init takes the whole PID namespace down, then SIGKILL whatever is still in the
cgroups and remove them. If any of this cannot be set up the run is refused (``SandboxUnavailable``):
code is never run without the sandbox.
"""
from __future__ import annotations

import os
import selectors
import shlex
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

NOBODY = 65534
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "raypost-sandbox"
_KEEP = 8192  # bytes of each stream kept (the last ones) for the verdict's details


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be built here; the message says what to install or change."""


@dataclass
class Limits:
    """Resource limits for one sandboxed program."""

    cpu_s: int = 5
    """CPU seconds per process (RLIMIT_CPU; SIGXCPU then SIGKILL one second later)."""
    wall_s: float = 10.0
    """Wall-clock seconds for the whole sandbox, start-up included."""
    memory_mb: int = 512
    """Address space per process (RLIMIT_AS) and, plus tmp_mb, memory of the whole process tree (cgroup)."""
    tmp_mb: int = 16
    """Size of the private /tmp (tmpfs)."""
    output_bytes: int = 1 << 20
    """stdout + stderr bytes after which the sandbox is killed."""
    pids: int = 32
    """Processes and threads in the sandbox at once (pids cgroup)."""
    nofile: int = 64
    """Open file descriptors per process."""
    file_mb: int = 16
    """Largest file a process may write (RLIMIT_FSIZE)."""


@dataclass
class Run:
    """What happened to one sandboxed program."""

    exit_code: int | None
    """Exit status of the program (bwrap reports 128+N when the program died of signal N)."""
    stdout: bytes = b""
    stderr: bytes = b""
    channel: bytes = b""
    """What the program wrote to its private status pipe (fd number passed to it as ``channel_fd``)."""
    wall_timeout: bool = False
    output_exceeded: bool = False
    memory_limit_hit: bool = False
    output_bytes: int = 0
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def signal(self) -> int | None:
        return self.exit_code - 128 if self.exit_code is not None and self.exit_code > 128 else None


# ---- cgroups ---------------------------------------------------------------------------------------
def _own_cgroup(controller: str) -> str | None:
    """This process's cgroup path in the v1 hierarchy of ``controller`` ('' for v2), or None."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(",") or (controller == "" and ctrls == ""):
            return path
    return None


_live: set[Path] = set()  # cgroups this process created and has not removed yet
_live_lock = threading.Lock()


def live_cgroups() -> list[Path]:
    """Cgroups of this process's sandboxes that still exist (empty between runs)."""
    with _live_lock:
        return sorted(d for d in _live if d.exists())


class _Cgroups:
    """A pids + memory cgroup pair for one run, nested under this process's own cgroups (so the limits
    of whoever runs the service still apply), removed at the end."""

    def __init__(self, limits: Limits):
        self.dirs: list[Path] = []
        name = f"{CGROUP_PREFIX}-{uuid.uuid4().hex[:12]}"
        mem = (limits.memory_mb + limits.tmp_mb + 64) << 20
        v1 = CGROUP_ROOT / "pids"
        try:
            if v1.is_dir() and (CGROUP_ROOT / "memory").is_dir():
                self._make(CGROUP_ROOT / "pids" / _own_cgroup("pids").lstrip("/") / name,
                           {"pids.max": str(limits.pids)})
                memdir = CGROUP_ROOT / "memory" / _own_cgroup("memory").lstrip("/") / name
                self._make(memdir, {"memory.limit_in_bytes": str(mem)})
                if (memdir / "memory.memsw.limit_in_bytes").exists():
                    # memsw must be >= memory.limit; equal means no swap for the sandbox
                    (memdir / "memory.memsw.limit_in_bytes").write_text(str(mem))
            elif (CGROUP_ROOT / "cgroup.controllers").exists():
                base = CGROUP_ROOT / _own_cgroup("").lstrip("/")
                ctrl = set((base / "cgroup.controllers").read_text().split())
                if not {"pids", "memory"} <= ctrl:
                    raise SandboxUnavailable(f"cgroup v2 at {base} lacks the pids/memory controllers")
                sub = set((base / "cgroup.subtree_control").read_text().split())
                if not {"pids", "memory"} <= sub:
                    (base / "cgroup.subtree_control").write_text("+pids +memory")
                self._make(base / name, {"pids.max": str(limits.pids), "memory.max": str(mem), "memory.swap.max": "0"})
            else:
                raise SandboxUnavailable("no cgroup hierarchy with pids and memory controllers under /sys/fs/cgroup")
        except SandboxUnavailable:
            self.remove()
            raise
        except (OSError, TypeError, AttributeError) as e:
            self.remove()
            raise SandboxUnavailable(f"cannot create the sandbox's pids/memory cgroups ({e}); run the reward "
                                     f"service as root or give it a delegated cgroup") from None

    def _make(self, path: Path, settings: dict[str, str]):
        path.mkdir(parents=False)
        self.dirs.append(path)
        with _live_lock:
            _live.add(path)
        for k, v in settings.items():
            if (path / k).exists() or k != "memory.swap.max":
                (path / k).write_text(v)

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def memory_limit_hit(self) -> bool:
        for d in self.dirs:
            for fname, key in (("memory.oom_control", "oom_kill"), ("memory.events", "oom_kill")):
                f = d / fname
                if f.exists():
                    for line in f.read_text().splitlines():
                        k, _, v = line.partition(" ")
                        if k == key and v.strip() not in ("", "0"):
                            return True
        return False

    def pids(self) -> set[int]:
        out = set()
        for d in self.dirs:
            try:
                out |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return out

    def settle(self, timeout_s: float = 0.3) -> None:
        """Give processes that are already exiting (the namespace's init) a moment to leave."""
        end = time.monotonic() + timeout_s
        while self.pids() and time.monotonic() < end:
            time.sleep(0.01)

    def kill_all(self) -> int:
        """SIGKILL every process left in the cgroups; returns how many were found."""
        found = 0
        for _ in range(50):
            for d in self.dirs:
                if (d / "cgroup.kill").exists():
                    (d / "cgroup.kill").write_text("1")
            pids = self.pids()
            if not pids:
                return found
            found += len(pids)
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        return found

    def remove(self):
        for d in reversed(self.dirs):
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # still busy for a moment after the last process died
                    time.sleep(0.02)
            if not d.exists():
                with _live_lock:
                    _live.discard(d)
        self.dirs = []


# ---- bubblewrap --------------------------------------------------------------------------------------
def _root_binds(extra_ro: list[str]) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
        p = Path(top)
        if p.is_symlink():
            args += ["--symlink", os.readlink(top), top]
        elif p.is_dir():
            args += ["--ro-bind", top, top]
    for path in extra_ro:
        if not Path(path).exists():
            raise SandboxUnavailable(f"sandbox read-only path {path!r} does not exist")
        args += ["--ro-bind", path, path]
    return args


_probe_lock = threading.Lock()
_probed: list = []  # [answer] once this process has probed


def sandbox_problem(refresh: bool = False) -> str | None:
    """Why the sandbox cannot run here (what to install or change, or what failed), or None if it can.

    The first call in a process runs a real tiny program through :func:`run` -- bwrap's namespaces, the
    uid drop, the cgroups, the status pipe -- and the answer is cached (``refresh=True`` probes again).
    A sandbox that only *looks* installed (bwrap present but no user namespaces, cgroups that cannot be
    joined) is reported with the failure's own message.
    """
    with _probe_lock:
        if refresh or not _probed:
            _probed[:] = [_probe()]
        return _probed[0]


def _probe() -> str | None:
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed: run scripts/install.sh (or apt-get install -y bubblewrap)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is needed to drop to uid 65534 before starting bwrap"
    try:
        r = run(["/bin/bash", "-c", 'echo ready >&"$0"', "{channel_fd}"], b"",
                Limits(cpu_s=2, wall_s=20, memory_mb=32, tmp_mb=1, output_bytes=1 << 16, pids=4))
    except SandboxUnavailable as e:
        return str(e)
    except OSError as e:
        return f"the sandbox failed to start: {e}"
    if r.channel == b"ready\n" and r.exit_code == 0:
        return None
    said = (r.stderr[-400:] or r.stdout[-400:]).decode(errors="replace").strip() or "nothing"
    why = "it hit the wall-clock limit of 20 s" if r.wall_timeout else f"exit status {r.exit_code}"
    return f"a test program did not run in the sandbox ({why}); it said: {said}"


def run(argv: list[str], stdin: bytes, limits: Limits, extra_ro: list[str] | None = None,
        deadline: float | None = None, env: dict[str, str] | None = None) -> Run:
    """Run ``argv`` (absolute path first) in the sandbox with ``stdin``; returns the :class:`Run`.

    ``argv`` may contain the placeholder ``{channel_fd}``: it is replaced by the number of a pipe the
    program can write to (read back as ``Run.channel``), kept apart from stdout so that the program's
    own output cannot be mistaken for its harness's reports. ``deadline`` (time.monotonic()) can only
    shorten ``limits.wall_s``. Raises :class:`SandboxUnavailable` when the sandbox cannot be created.
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable("bubblewrap is not installed: run scripts/install.sh (or apt-get install -y bubblewrap)")
    start = time.monotonic()
    wall_end = start + limits.wall_s if deadline is None else min(start + limits.wall_s, deadline)
    cg = _Cgroups(limits)
    ch_r, ch_w = os.pipe()
    try:
        inner = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
                 "--cap-drop", "ALL", "--hostname", "sandbox",
                 *_root_binds(list(extra_ro or [])),
                 "--size", str(limits.tmp_mb << 20), "--tmpfs", "/tmp",
                 "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/",
                 "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
                 "--setenv", "LANG", "C.UTF-8"]
        for k, v in (env or {}).items():
            inner += ["--setenv", k, v]
        inner += ["--chdir", "/tmp"]
        if os.geteuid() == 0:
            # A real uid 65534 outside, not just inside a user namespace that maps it back to root.
            inner = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *inner]
        else:
            inner[1:1] = ["--uid", str(NOBODY), "--gid", str(NOBODY)]
        inner += [a.replace("{channel_fd}", str(ch_w)) for a in argv]
        # Join the cgroups first, as root, then exec the rest: no instant of the program runs outside them.
        join = " && ".join(f"echo $$ > {shlex.quote(f)}" for f in cg.procs_files)
        wrapper = ["/bin/sh", "-c", f"{join} || exit 125; exec \"$@\"", "sandbox", *inner]
        proc = subprocess.Popen(wrapper, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(ch_w,), start_new_session=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except BaseException:
        os.close(ch_r)
        os.close(ch_w)
        cg.kill_all()
        cg.remove()
        raise
    os.close(ch_w)
    result = Run(exit_code=None)
    try:
        _feed_stdin(proc, stdin)
        _collect(proc, ch_r, limits, wall_end, result)
    finally:
        os.close(ch_r)
        _kill(proc)
        cg.settle()
        left = cg.kill_all()
        if left:
            result.notes.append(f"killed {left} process(es) left in the sandbox's cgroup")
        result.memory_limit_hit = cg.memory_limit_hit()
        cg.remove()
    if result.exit_code == 125 and not result.channel:
        raise SandboxUnavailable("could not move the sandbox into its cgroups: " + result.stderr[-300:].decode(errors="replace"))
    result.wall_s = time.monotonic() - start
    return result


def _feed_stdin(proc: subprocess.Popen, data: bytes):
    def feed():
        try:
            proc.stdin.write(data)
        except (BrokenPipeError, OSError, ValueError):
            pass
        finally:
            try:
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass

    threading.Thread(target=feed, daemon=True).start()


def _collect(proc: subprocess.Popen, ch_r: int, limits: Limits, wall_end: float, result: Run):
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), ch_r: bytearray()}
    sel = selectors.DefaultSelector()
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    total = 0
    exited_at = None
    while True:
        now = time.monotonic()
        if now >= wall_end:
            result.wall_timeout = True
            break
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None and (not sel.get_map() or now - exited_at > 0.5):
            break  # the program is gone; whatever still holds a pipe open dies with its cgroup
        for key, _ in sel.select(timeout=min(0.05, max(0.0, wall_end - now))):
            fd = key.fd
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                sel.unregister(fd)
                continue
            if fd == ch_r:
                if len(bufs[fd]) < _KEEP * 8:
                    bufs[fd] += chunk
                continue
            total += len(chunk)
            bufs[fd] += chunk
            if len(bufs[fd]) > _KEEP:  # keep the tail: that is where tracebacks are
                del bufs[fd][:-_KEEP]
        if total > limits.output_bytes:
            result.output_exceeded = True
            break
    sel.close()
    _kill(proc)
    result.exit_code = proc.returncode
    result.stdout, result.stderr, result.channel = (bytes(bufs[proc.stdout.fileno()]), bytes(bufs[proc.stderr.fileno()]),
                                                    bytes(bufs[ch_r]))
    result.output_bytes = total
    proc.stdout.close()
    proc.stderr.close()


def _kill(proc: subprocess.Popen):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
