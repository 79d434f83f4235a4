"""The reward service as a Ray actor, for running it inside the cluster next to the trainer.

    svc = start_service(ServiceConfig(port=0), token)        # a detached-free actor owned by the caller
    url = ray.get(svc.url.remote())                          # http://<node ip or host>:<port>

(``ray job submit -- python -m rewards.server ...`` is the other way to run it on a cluster.) The token is
handed over explicitly: the actor's environment need not contain it.
"""
from __future__ import annotations

import threading
import time

import ray

from rewards.service_config import ServiceConfig


class RewardService:
    """Runs uvicorn with :func:`rewards.server.build_app` on a thread of this process."""

    def __init__(self, cfg: ServiceConfig, token: str, start_timeout_s: float = 60.0):
        import uvicorn

        from rewards.server import build_app

        app = build_app(cfg, token)
        self.cfg = cfg
        self._server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level,
                                                     timeout_keep_alive=5))
        self._thread = threading.Thread(target=self._server.run, name="reward-service", daemon=True)
        self._thread.start()
        end = time.monotonic() + start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise RuntimeError(f"reward service did not start on {cfg.host}:{cfg.port} (port in use?)")
            time.sleep(0.05)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]  # the real one when cfg.port == 0

    def url(self) -> str:
        host = self.cfg.host
        if host in ("0.0.0.0", "::"):
            host = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
        return f"http://{host}:{self.port}"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


RewardServiceActor = ray.remote(RewardService)


def start_service(cfg: ServiceConfig, token: str, num_cpus: float = 0.25, **actor_options):
    """Start :class:`RewardService` as a Ray actor (``actor_options``: e.g. a placement group strategy)."""
    return RewardServiceActor.options(num_cpus=num_cpus, **actor_options).remote(cfg, token)
