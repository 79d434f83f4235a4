"""Connect to a Ray cluster (an address plus its token) or start a local one, with errors that say what to do."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from config.loader import RunStopped
from config.schema import ClusterConfig

NAMESPACE = "raypost"
"""The Ray namespace every process that uses a reservation joins (cluster/reservation.py): placement-group names are
looked up per namespace."""


class ClusterError(RunStopped):
    """The cluster cannot be used as configured; the message says what to change (``run_cli`` prints it without a
    traceback, as ``run stopped: ...``)."""


def _host_port(address: str) -> tuple[str, int]:
    addr = address.removeprefix("ray://").removeprefix("http://").removeprefix("https://").rstrip("/")
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"cluster.address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001); "
                           "use 'local' to start a cluster on this machine or 'auto' to join one started with `ray start`")
    return host, int(port)


def _token_available(env_name: str) -> bool:
    return bool(os.environ.get(env_name) or os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").exists())


def start_local(attempts: int = 3, **kwargs):
    """``ray.init(address="local")``, retried: Ray gives a new node a fixed 30 s to register, which a
    heavily loaded small machine can miss; a second try on the warmed-up machine succeeds."""
    import ray

    for i in range(attempts):
        try:
            return ray.init(address="local", **kwargs)
        except Exception as e:  # Ray raises a bare Exception for this timeout
            if "timed out during startup" not in str(e) or i == attempts - 1:
                raise
            ray.shutdown()


class LocalHead:
    """A Ray head on this machine, started as ``ray start --head --block`` in a child process: a real cluster with a
    dashboard and job server on 127.0.0.1 (what ``ray job submit`` talks to), every port picked free (two such
    clusters on one machine must not share the dashboard agent's fixed default port, 52365: a job server whose
    agent lost that port has "no available agent to submit job"), its own temp folder, and its life tied to this
    process (PR_SET_PDEATHSIG: killed outright, this process still takes it down -- its reservation and jobs too)."""

    def __init__(self, num_cpus: float | None = None, num_gpus: float | None = None, timeout_s: float = 120.0):
        import tempfile

        def free_port() -> int:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]

        self.port, self.dashboard_port = free_port(), free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="raypost-", dir="/tmp")  # short: Ray's socket paths have a limit
        ray_cli = str(Path(sys.executable).with_name("ray"))
        cmd = [ray_cli, "start", "--head", "--block", f"--port={self.port}", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
               f"--temp-dir={self.temp_dir}", "--disable-usage-stats"]
        if num_cpus is not None:
            cmd.append(f"--num-cpus={int(num_cpus)}")
        if num_gpus is not None:
            cmd.append(f"--num-gpus={int(num_gpus)}")
        self.log = Path(self.temp_dir) / "head.log"
        # Token auth, as the design asks: `ray start` turns it on by default, so this process (and what inherits its
        # environment: the head, the stage jobs) must too -- with a token, made once in ~/.ray/auth_token. An explicit
        # RAY_AUTH_MODE=disabled is respected.
        if not _token_available("RAY_AUTH_TOKEN") and os.environ.get("RAY_AUTH_MODE") != "disabled":
            subprocess.run([ray_cli, "get-auth-token", "--generate"], check=True, capture_output=True)
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        deadline = time.time() + timeout_s
        while "Ray runtime started" not in self.log.read_text():
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise ClusterError(f"the local Ray head did not start ({self.log}):\n{self.log.read_text()[-2000:]}")
            time.sleep(0.3)
        self.address = f"127.0.0.1:{self.port}"

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM to ``ray start --block``, which stops every process of the head; SIGKILL to the group after
        ``timeout_s``."""
        import shutil
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:  # not Linux: the head outlives a killed parent; stop() still ends it
        pass


_HEAD: LocalHead | None = None


def stop_local_head() -> None:
    """Stop the head ``connect(..., dashboard=True)`` started here, if any (after ``ray.shutdown``)."""
    global _HEAD
    if _HEAD is not None:
        import ray

        ray.shutdown()
        _HEAD.stop()
        _HEAD = None


def connect(cfg: ClusterConfig, runtime_env: dict | None = None, dashboard: bool = False):
    """``ray.init`` for ``cfg.address``; returns Ray's context. Idempotent within a process.

    ``dashboard``: the local cluster is a ``LocalHead`` -- a head with a dashboard and job server on 127.0.0.1, for
    the course's stage jobs -- that this process joins and stops at exit (``stop_local_head``). With ``cfg.reservation`` the process joins the namespace reservations live in (a placement group's
    name is looked up in the asking job's namespace).

    - 'local': inside `ray job submit` (RAY_ADDRESS is set) join the job's cluster, else start one here;
    - 'auto': join the cluster started with `ray start` on this node;
    - 'HOST:PORT' / 'ray://HOST:PORT': connect to that head.
    """
    import ray

    if cfg.auth_token_env != "RAY_AUTH_TOKEN" and os.environ.get(cfg.auth_token_env):
        os.environ["RAY_AUTH_TOKEN"] = os.environ[cfg.auth_token_env]
    address = cfg.address
    kwargs: dict = {"runtime_env": runtime_env, "logging_level": "WARNING", "log_to_driver": True}
    if cfg.reservation:
        kwargs["namespace"] = NAMESPACE
    if address == "local" and not os.environ.get("RAY_ADDRESS"):
        if ray.is_initialized():
            return ray.get_runtime_context()
        if dashboard:
            import atexit

            global _HEAD
            _HEAD = LocalHead(cfg.num_cpus, 0 if cfg.device == "cpu" else None)
            atexit.register(stop_local_head)
            return ray.init(address=_HEAD.address, **kwargs)
        kwargs.update(num_cpus=cfg.num_cpus, include_dashboard=False)
        if cfg.device == "cpu":
            kwargs["num_gpus"] = 0
        return start_local(**kwargs)
    else:
        if address == "local":
            address = os.environ["RAY_ADDRESS"]
        if address != "auto":
            host, port = _host_port(address)
            try:
                socket.create_connection((host, port), timeout=5).close()
            except OSError as e:
                raise ClusterError(f"cannot reach the Ray head at {host}:{port} ({e.strerror or e}); check cluster.address, "
                                   "that the head is running (`ray status`) and that the port is open") from None
        if "RAY_AUTH_MODE" not in os.environ and _token_available(cfg.auth_token_env):
            # A head started with `ray start` runs token auth by default; a client with the token uses it (Ray's own
            # rule for a local cluster), else every call is "Authentication token is missing".
            from ray._private.authentication.authentication_token_setup import (
                maybe_enable_token_auth_if_token_available)

            maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        if os.environ.get("RAY_AUTH_MODE") == "token" and not _token_available(cfg.auth_token_env):
            raise ClusterError(f"RAY_AUTH_MODE=token but no token: set {cfg.auth_token_env} to the cluster's token "
                               "(on the head: `ray get-auth-token`) or put it in ~/.ray/auth_token")
        kwargs["address"] = address
    if ray.is_initialized():  # idempotent within a process, after the checks above
        return ray.get_runtime_context()
    try:
        return ray.init(**kwargs)
    except ConnectionError as e:
        msg = str(e)
        if "auth" in msg.lower() or "token" in msg.lower() or "unauthenticated" in msg.lower():
            raise ClusterError(f"the Ray cluster at {address} refused this client's token: {msg.splitlines()[0]}. "
                               f"Set RAY_AUTH_MODE=token and {cfg.auth_token_env} to the head's token (`ray get-auth-token` there)") from None
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: {msg.splitlines()[0] if msg else e!r}. "
                           "Is the head running (`ray status`)? Is cluster.address right?") from None
    except RuntimeError as e:
        msg = str(e)
        if "auth" in msg.lower() or "token" in msg.lower():
            raise ClusterError(f"Ray token problem connecting to {address}: {msg.splitlines()[0]}. "
                               f"Set {cfg.auth_token_env} (or RAY_AUTH_TOKEN) to the head's token; get it there with `ray get-auth-token`") from None
        raise
