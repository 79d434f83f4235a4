"""Remote HTTP scorers: a scorer whose work happens behind a URL the operator configured.

The URL must match the operator's destination allowlist (``RAYPOST_REWARD_REMOTE_ALLOW=host[:port],...``
or the service's ``remote_allow``), checked when the scorer is built; redirects are not followed, so an
allowed host cannot bounce the call elsewhere. Two wire formats: this project's ``/v1/score`` JSON
(``protocol=raypost``) and the OpenRLHF remote-RM JSON (``protocol=openrlhf``: ``{query, prompts, labels}``
-> ``{rewards}``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from rewards.base import ERROR, OK, Item, Result
from rewards.client import RewardClient, RewardServiceError, TransportFailure, post_json, score_in_halves

ALLOW_ENV = "RAYPOST_REWARD_REMOTE_ALLOW"

_allowed: set[str] = {h.strip().lower() for h in os.environ.get(ALLOW_ENV, "").split(",") if h.strip()}


def allow_destinations(hosts) -> None:
    """Add ``host`` / ``host:port`` entries to this process's allowlist (the operator's config)."""
    _allowed.update(h.strip().lower() for h in hosts if h and h.strip())


def check_destination(url: str) -> None:
    """Raise ValueError unless ``url`` is http(s) to an allowed host (and port)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"remote scorer url {url!r}: expected http(s)://host[:port]/path")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname.lower()
    if host not in _allowed and f"{host}:{port}" not in _allowed:
        raise ValueError(f"remote scorer url {url!r}: {host}:{port} is not in the destination allowlist "
                         f"({ALLOW_ENV} or the service's remote_allow); allowed: {sorted(_allowed) or 'none'}")


@dataclass
class RemoteScorer:
    """Score by calling ``url``. Options: ``url``, ``protocol`` ("raypost" | "openrlhf"), ``scorer`` (the
    remote scorer's name, raypost protocol), ``token_env`` (variable holding a bearer token; empty: none),
    ``timeout_s``, ``retries`` (on 5xx and timeouts only). A 413 is answered by sending the batch in halves;
    an item too large alone gets status error naming ``max_body_bytes``."""

    url: str = ""
    protocol: str = "raypost"
    scorer: str = ""
    token_env: str = ""
    timeout_s: float = 10.0
    retries: int = 2
    name: str = "remote"

    def __post_init__(self):
        check_destination(self.url)
        if self.protocol not in ("raypost", "openrlhf"):
            raise ValueError(f"remote scorer protocol={self.protocol!r}: use 'raypost' or 'openrlhf'")
        if self.protocol == "raypost" and not (self.scorer and self.token_env):
            raise ValueError("remote scorer with protocol=raypost needs options scorer=<name on the remote service> "
                             "and token_env=<variable holding its bearer token>")
        token = os.environ.get(self.token_env, "") if self.token_env else ""
        if self.token_env and not token:
            raise ValueError(f"remote scorer: environment variable {self.token_env} (token_env) is empty")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        if self.protocol == "raypost":
            base = self.url.rstrip("/")
            base = base[: -len("/v1/score")] if base.endswith("/v1/score") else base
            self._client = RewardClient(base, token, self.timeout_s, self.retries)
        else:
            self._http = httpx.Client(follow_redirects=False, trust_env=False)

    def score(self, items: list[Item]) -> list[Result]:
        if self.protocol == "raypost":
            try:
                return self._client.score(self.scorer, items)
            except RewardServiceError as e:
                return [Result(None, ERROR, {"reason": str(e)}) for _ in items]
        try:
            return score_in_halves(items, self._post_openrlhf)  # a 413 is answered by sending halves
        except RewardServiceError as e:
            return [Result(None, ERROR, {"reason": f"remote scorer: {e}"[:500]}) for _ in items]

    def _post_openrlhf(self, items: list[Item]) -> list[Result]:
        body = {"query": [it.prompt + it.completion for it in items], "prompts": [it.prompt for it in items],
                "labels": [it.reference for it in items]}
        try:
            data = post_json(self._http, self.url, body, self._headers, self.timeout_s, self.retries)
            rewards = data["rewards"]
            if not isinstance(rewards, list) or len(rewards) != len(items):
                raise ValueError(f"'rewards' must be a list of {len(items)} numbers")
            scores = [float(r) for r in rewards]
        except TransportFailure as e:
            return [Result(None, e.status, {"reason": str(e)}) for _ in items]
        except (KeyError, TypeError, ValueError) as e:
            return [Result(None, ERROR, {"reason": f"remote scorer: {e}"[:500]}) for _ in items]
        # a remote that answers NaN (Python's JSON parser takes it) has not judged the item
        return [Result(s, OK, {}) if math.isfinite(s) else
                Result(None, ERROR, {"reason": f"remote scorer answered a non-finite reward {s}"}) for s in scores]
