"""The agentserver's internal routes as the gateway calls them, and the one verifier of the tokens
it issues (``TokenVerifier``): the identity interface's agentserver backend for the ``tui`` scope
(``appgateway.auth``) and the ``sdk`` scope (``sdk.auth``).

``ask(path, body)``: ``POST {CXG_AGENTSERVER_INTERNAL_URL}<path>`` with ``X-Internal-Secret``.
A 401 is a refusal (``InvalidToken``); anything else but a 200 (a network error, a timeout, 5xx,
another status) is an outage (``VerifierUnavailable``), so a client retries rather than
concluding its token is bad.

``TokenVerifier`` caches answers in the process under a SHA-256 of the agentserver's URL and the
token (never the token itself): acceptances for ``accept_ttl`` seconds, refusals for
``reject_ttl`` (0: never), outages never; so reconnect storms do not hammer the agentserver, and a
revoked token still works for at most ``accept_ttl``. The cache is bounded (the least recently
used entry goes first). Concurrent misses for one token on one event loop share one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
from django.conf import settings

from workspaces import identity

TIMEOUT = 5.0
BODY_LOG_LIMIT = 1024


class InvalidToken(Exception):
    """agentserver refused the token (401)."""


class VerifierUnavailable(Exception):
    """agentserver could not give an answer: the token may well be valid."""


async def ask(path: str, body: dict[str, str]) -> httpx.Response:
    """POST ``body`` to an agentserver internal route; the 200 response. Raises ``InvalidToken``
    on a 401 and ``VerifierUnavailable`` when agentserver cannot give an answer."""
    base_url = settings.CXG_AGENTSERVER_INTERNAL_URL.rstrip("/")
    secret = settings.CXG_AGENTSERVER_INTERNAL_SECRET
    if not base_url or not secret:
        raise VerifierUnavailable("CXG_AGENTSERVER_INTERNAL_URL or CXG_AGENTSERVER_INTERNAL_SECRET is not set")
    try:
        # A client per call: calls are rare (cached), and a long-lived client would be tied to
        # one event loop.
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            response = await client.post(base_url + path, json=body, headers={"X-Internal-Secret": secret})
    except httpx.HTTPError as exc:
        raise VerifierUnavailable(f"{type(exc).__name__}: {exc}") from exc
    if response.status_code == httpx.codes.UNAUTHORIZED:
        raise InvalidToken()
    if response.status_code != httpx.codes.OK:
        raise VerifierUnavailable(f"status={response.status_code} body={response.text[:BODY_LOG_LIMIT]!r}")
    return response


@contextlib.contextmanager
def answers() -> Iterator[None]:
    """The agentserver's refusal and outage as the identity interface's 401 and 503."""
    try:
        yield
    except InvalidToken:
        raise identity.Unauthorized("unauthorized") from None
    except VerifierUnavailable as exc:
        raise identity.Unavailable(str(exc)) from exc


@dataclass(frozen=True)
class Verified:
    user_id: str
    workspace_id: str


def _verified(response: httpx.Response) -> Verified:
    """``{workspace_id, user_id}``; without a workspace the answer is no answer (an outage)."""
    try:
        data = response.json()
        workspace_id, user_id = data["workspace_id"], data.get("user_id", "")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise VerifierUnavailable(f"undecodable answer: {response.text[:BODY_LOG_LIMIT]!r}") from exc
    if not isinstance(user_id, str) or not isinstance(workspace_id, str) or not workspace_id:
        raise VerifierUnavailable(f"answer without ids: {response.text[:BODY_LOG_LIMIT]!r}")
    return Verified(user_id=user_id, workspace_id=workspace_id)


class TokenVerifier:
    """Tokens checked at ``path`` (body ``{"token": ...}``), for the identity ``scope``."""

    def __init__(
        self, path: str, scope: str, *, accept_ttl: float, reject_ttl: float = 0.0, max_entries: int = 10_000
    ) -> None:
        self.path = path
        self.scope = scope
        self.accept_ttl = accept_ttl
        self.reject_ttl = reject_ttl
        self.max_entries = max_entries
        self.cache: OrderedDict[str, tuple[Verified | None, float]] = OrderedDict()  # None: refused
        self._lock = threading.Lock()  # event loops in several threads (async_to_sync) share it
        self._in_flight: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future[Verified]] = {}

    async def grant(self, token: str) -> identity.Grant:
        """The identity interface's backend (``identity.register_agentserver``)."""
        with answers():
            verified = await self.verify(token)
        return identity.Grant(verified.workspace_id, verified.user_id, "", frozenset({self.scope}))

    async def verify(self, token: str) -> Verified:
        """The token's identity; raises ``InvalidToken`` or ``VerifierUnavailable``."""
        # Another agentserver, or the same with another secret, answers afresh.
        origin = f"{settings.CXG_AGENTSERVER_INTERNAL_URL}\0{settings.CXG_AGENTSERVER_INTERNAL_SECRET}"
        key = hashlib.sha256(f"{origin}\0{token}".encode()).hexdigest()
        with self._lock:
            entry = self.cache.get(key)
            if entry is not None and entry[1] > time.monotonic():
                self.cache.move_to_end(key)
                if entry[0] is None:
                    raise InvalidToken()
                return entry[0]
        loop = asyncio.get_running_loop()
        flight = self._in_flight.get((loop, key))
        if flight is not None:
            try:
                return await asyncio.shield(flight)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not flight.cancelled() or (task is not None and task.cancelling()):
                    raise
            return await self.verify(token)  # the caller that asked was cancelled, not this one
        flight = self._in_flight[(loop, key)] = loop.create_future()
        flight.add_done_callback(lambda done: done.cancelled() or done.exception())  # waiters or not
        try:
            verified = await self._ask(key, token)
        except Exception as exc:
            flight.set_exception(exc)
            raise
        except BaseException:
            flight.cancel()
            raise
        finally:
            del self._in_flight[(loop, key)]
        flight.set_result(verified)
        return verified

    async def _ask(self, key: str, token: str) -> Verified:
        try:
            verified = _verified(await ask(self.path, {"token": token}))
        except InvalidToken:
            if self.reject_ttl > 0:
                self._remember(key, None, self.reject_ttl)
            raise
        self._remember(key, verified, self.accept_ttl)
        return verified

    def _remember(self, key: str, verified: Verified | None, ttl: float) -> None:
        with self._lock:
            self.cache[key] = (verified, time.monotonic() + ttl)
            self.cache.move_to_end(key)
            while len(self.cache) > self.max_entries:
                self.cache.popitem(last=False)
