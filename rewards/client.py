"""Client of the REST reward service, and the one HTTP call (timeouts, bounded retries) it shares with
remote scorers.

Retries happen only where trying again can help and cannot double-count: 5xx answers and timeouts,
a few times, with exponential back-off (and, for this project's own service, 429 after its Retry-After). 4xx answers are the caller's mistake (a wrong token, an unknown
scorer) and raise :class:`RewardServiceError` with the service's message at once -- except 413 (the batch
is over the service's body or item limit), which :func:`score_in_halves` answers by sending the batch in
halves, down to single items; an item that is too large alone gets status error naming the limit.
"""
from __future__ import annotations

import time

import httpx

from collections.abc import Callable

from rewards.base import ERROR, TIMEOUT, Item, Result


class RewardServiceError(RuntimeError):
    """The service refused the request (4xx); the message is the service's, e.g. which limit was hit;
    ``status_code`` is the HTTP status (0 for a refused redirect)."""

    def __init__(self, msg: str, status_code: int = 0):
        super().__init__(msg)
        self.status_code = status_code


class TransportFailure(RuntimeError):
    """No usable answer after the retries (timeouts or 5xx); ``status`` is ``timeout`` or ``error``."""

    def __init__(self, msg: str, status: str):
        super().__init__(msg)
        self.status = status


def post_json(http: httpx.Client, url: str, body: dict, headers: dict, timeout_s: float, retries: int,
              retry_busy: bool = False) -> dict:
    """POST ``body`` as JSON; retry 5xx and timeouts (and, with ``retry_busy``, 429 after its Retry-After)
    up to ``retries`` times; return the JSON answer."""
    last, status, wait = "", ERROR, 0.0
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(max(wait, min(2.0, 0.1 * 2 ** (attempt - 1))))
            wait = 0.0
        try:
            r = http.post(url, json=body, headers=headers, timeout=timeout_s)
        except httpx.TimeoutException as e:
            last, status = f"timed out after {timeout_s:g} s ({type(e).__name__})", TIMEOUT
            continue
        except httpx.HTTPError as e:  # connection refused, DNS: not retried, the service is not there
            raise TransportFailure(f"cannot reach {url}: {type(e).__name__}: {e}", ERROR) from None
        if r.status_code == 429 and retry_busy:
            last, status = "HTTP 429: the service is at its concurrency limit", ERROR
            try:
                wait = min(10.0, float(r.headers.get("retry-after", "1")))
            except ValueError:
                wait = 1.0
            continue
        if r.status_code >= 500:
            last, status = f"HTTP {r.status_code}: {r.text[:300]}", ERROR
            continue
        if 300 <= r.status_code < 400:
            raise RewardServiceError(f"{url} answered HTTP {r.status_code} (redirect to "
                                     f"{r.headers.get('location', '?')[:200]}); redirects are not followed")
        if r.status_code >= 400:
            try:
                msg = r.json().get("detail", r.text)
            except ValueError:
                msg = r.text
            raise RewardServiceError(f"{url} answered HTTP {r.status_code}: {str(msg)[:500]}", r.status_code)
        try:
            return r.json()
        except ValueError:
            raise TransportFailure(f"{url} answered with invalid JSON: {r.text[:200]}", ERROR) from None
    raise TransportFailure(f"{url}: no answer after {retries + 1} attempts; last: {last}", status)


def score_in_halves(items: list[Item], post_batch: Callable[[list[Item]], list[Result]]) -> list[Result]:
    """``post_batch(items)``, and where the service answers 413 (too large), the two halves in turn, down to
    single items; an item refused alone gets ``Result(None, "error")`` saying which limit to raise.

    A batch of n items costs at most 2n - 1 requests (every item refused alone), one when nothing is too large.
    """
    try:
        return post_batch(items)
    except RewardServiceError as e:
        if e.status_code != 413:
            raise
        if len(items) > 1:
            mid = len(items) // 2
            return score_in_halves(items[:mid], post_batch) + score_in_halves(items[mid:], post_batch)
        return [Result(None, ERROR, {
            "reason": f"this item alone is too large for the reward service ({e}); raise the service's "
                      f"max_body_bytes or shorten the item", "http_status": 413})]


class RewardClient:
    """``RewardClient(url, token).score("json_valid", items) -> list[Result]`` against ``rewards.server``.

    Batches larger than ``batch_size`` are sent in several requests. A service that cannot be reached or
    keeps failing gives every affected item a Result with status ``timeout`` / ``error`` (score None), so a
    trainer can mask them. A batch over the service's size limits (413) is sent in halves; an item too
    large alone gets status ``error`` naming the limit (``max_body_bytes``). Other refusals (4xx: wrong token,
    unknown scorer) raise :class:`RewardServiceError`: they are a setup mistake, not one item's.
    """

    def __init__(self, url: str, token: str, timeout_s: float = 30.0, retries: int = 2, batch_size: int = 256):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"reward.remote_url={url!r}: expected http(s)://host:port")
        if not token:
            raise ValueError("the reward service needs a bearer token: set the variable named by "
                             "reward.remote_token_env (default REWARD_API_TOKEN)")
        self.url = url.rstrip("/")
        self.timeout_s, self.retries, self.batch_size = timeout_s, retries, batch_size
        self._headers = {"Authorization": f"Bearer {token}"}
        self._http = httpx.Client(follow_redirects=False, trust_env=False)

    def score(self, scorer: str, items: list[Item]) -> list[Result]:
        out: list[Result] = []
        for i in range(0, len(items), self.batch_size):
            out += score_in_halves(items[i:i + self.batch_size], lambda chunk: self._post(scorer, chunk))
        return out

    def _post(self, scorer: str, chunk: list[Item]) -> list[Result]:
        body = {"scorer": scorer, "deadline_s": self.timeout_s,
                "items": [{"prompt": it.prompt, "completion": it.completion, "reference": it.reference}
                          for it in chunk]}
        try:
            # the HTTP timeout leaves the service its whole deadline plus time to answer
            # our own service asks busy clients to come back (429 + Retry-After): that is retried too
            data = post_json(self._http, f"{self.url}/v1/score", body, self._headers, self.timeout_s + 10,
                             self.retries, retry_busy=True)
            results = data["results"]
            if len(results) != len(chunk):
                raise TransportFailure(f"service returned {len(results)} results for {len(chunk)} items", ERROR)
            return [Result(r.get("score"), r.get("status", ERROR), r.get("details") or {}) for r in results]
        except TransportFailure as e:
            return [Result(None, e.status, {"reason": str(e)}) for _ in chunk]
        except (KeyError, TypeError, AttributeError) as e:
            return [Result(None, ERROR, {"reason": f"malformed answer from the service: {e}"}) for _ in chunk]

    def scorers(self) -> dict:
        """The service's served scorers, limits and sandbox state (needs the token: a quick auth check)."""
        r = self._http.get(f"{self.url}/v1/scorers", headers=self._headers, timeout=self.timeout_s)
        if r.status_code != 200:
            raise RewardServiceError(f"{self.url}/v1/scorers answered HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    def health(self) -> dict:
        return self._http.get(f"{self.url}/healthz", timeout=self.timeout_s).json()

    def close(self):
        self._http.close()


class ServiceScorer:
    """One scorer served by the REST service, as a local :class:`rewards.base.Scorer` (e.g. a component of
    :class:`rewards.compose.WeightedScorer`)."""

    def __init__(self, client: RewardClient, name: str):
        self.client, self.name = client, name

    def score(self, items: list[Item]) -> list[Result]:
        return self.client.score(self.name, items)
