"""Operator settings of the REST reward service (``python -m rewards.server --config service.yaml key=value``).

Everything a request could otherwise choose -- which code is loaded, which hosts are called, how long and
how much -- is fixed here by the operator; a request only names one of the scorers listed in ``scorers``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from config.loader import check

# Scorers served when the config names none: the built-ins that need no operator-specific option.
DEFAULT_SCORERS = ("json_valid", "json_schema", "exact_answer", "format", "length", "overlong", "python_unit_tests")


@dataclass
class ServiceConfig:
    host: str = "127.0.0.1"
    """Interface to listen on (loopback by default; put a TLS proxy in front for anything else)."""
    port: int = 8008
    """TCP port (0: any free port, reported by the Ray actor)."""
    token_env: str = "REWARD_API_TOKEN"
    """Environment variable holding the bearer token every route but /healthz requires. The service refuses
    to start without it."""
    max_body_bytes: int = 4 << 20
    """Largest request body; larger ones get 413 before they are parsed."""
    max_items: int = 256
    """Most items in one request (413 beyond)."""
    max_item_chars: int = 65536
    """Longest prompt, completion or (JSON-encoded) reference of an item; a longer item gets status error."""
    deadline_s: float = 30.0
    """Per-request deadline: items not scored by then come back with status timeout. A request may ask
    for less (``deadline_s`` in the body), never more. A scorer still running then (2 s later for scorers
    that stop on their own: the sandbox, the reward model) has its worker process killed."""
    max_concurrency: int = 4
    """Requests scored at the same time, each in one of this many worker processes; more get 429 with
    Retry-After at once (no unbounded queue). Every worker builds all served scorers (a reward model is
    loaded once per worker); a killed worker is replaced on the next request. A scorer's own bounds hold per
    worker: ``python_unit_tests`` with ``workers: 2`` may run up to 2 x max_concurrency sandboxes at once,
    and each worker's reward model uses torch's threads (set its ``threads`` option on a small machine)."""
    plugins: list[str] = field(default_factory=list)
    """Installed entry-point plugins (group ``raypost.rewards``) this service may load."""
    remote_allow: list[str] = field(default_factory=list)
    """Destinations (``host`` or ``host:port``) that ``remote`` scorers may call; nothing else is reachable."""
    scorers: dict[str, dict] = field(default_factory=dict)
    """Served scorers: name -> options, with ``scorer: BASE`` to serve a built-in or plugin under another
    name (e.g. ``{strict_json: {scorer: json_valid}, rm: {scorer: reward_model, model_path: runs/rm/model}}``).
    Empty: the built-ins that need no options, with their defaults."""
    openrlhf_scorer: str = "exact_answer"
    """Which served scorer answers the OpenRLHF-compatible route (``labels`` become references)."""
    log_level: str = "warning"
    """uvicorn's log level."""

    def __post_init__(self):
        check(0 <= self.port <= 65535, "port", f"must be in 0..65535 (0: any free port), got {self.port}")
        check(self.max_body_bytes >= 1024, "max_body_bytes", "must be at least 1024")
        check(self.max_items >= 1, "max_items", "must be >= 1")
        check(self.max_item_chars >= 1, "max_item_chars", "must be >= 1")
        check(self.deadline_s > 0, "deadline_s", "must be > 0")
        check(self.max_concurrency >= 1, "max_concurrency", "must be >= 1")
        for name, opts in self.scorers.items():
            check(isinstance(opts, dict), f"scorers.{name}", "must be a mapping of options (may be empty: {})")

    def served(self) -> dict[str, dict]:
        return dict(self.scorers) if self.scorers else {n: {} for n in DEFAULT_SCORERS}
