"""Connect to a Ray cluster (an address plus its token) or start a local one, with errors that say what to do."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from config.schema import ClusterConfig


class ClusterError(RuntimeError):
    """The cluster cannot be used as configured; the message says what to change."""


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


def connect(cfg: ClusterConfig, runtime_env: dict | None = None, dashboard: bool = False):
    """``ray.init`` for ``cfg.address``; returns Ray's context. Idempotent within a process.

    ``dashboard``: a local cluster started here gets a dashboard (and so a job server, for the course's stage jobs)
    on 127.0.0.1. With ``cfg.reservation`` the process joins the namespace reservations live in (a placement group's
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
        from cluster.reservation import NAMESPACE

        kwargs["namespace"] = NAMESPACE
    if address == "local" and not os.environ.get("RAY_ADDRESS"):
        if ray.is_initialized():
            return ray.get_runtime_context()
        kwargs.update(num_cpus=cfg.num_cpus, include_dashboard=dashboard)
        if dashboard:
            kwargs["dashboard_host"] = "127.0.0.1"  # loopback only (the design's security stance)
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
