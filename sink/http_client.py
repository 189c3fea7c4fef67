"""The HTTP side: one aiohttp session, a client-side rate limit, and plain results.

Nothing here raises for an HTTP status or a network error: every call returns an
:class:`HttpResult` so that each one can be reported and classified the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

import aiohttp

from sink.endpoint import PreparedRequest


@dataclass(slots=True)
class HttpResult:
    status: int | None  # None: no answer (timeout, connection refused or reset)
    headers: dict[str, str]
    body: bytes
    latency_s: float
    error: str | None = None


class RateLimiter:
    """At most ``rate`` calls in any sliding window of one second.

    Clari counts requests per token in a sliding second; a token bucket would allow its
    burst on top of the rate and earn 429s, so this keeps the send times of the last
    ``n`` calls and waits until the oldest leaves the window (plus a small margin for
    network jitter between here and the server's clock).
    """

    MARGIN_S = 0.01

    def __init__(self, rate: float) -> None:
        self.n = max(1, int(rate))
        self.window_s = self.n / rate + self.MARGIN_S
        self._sent: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            now = time.monotonic()
            if len(self._sent) >= self.n:
                wait = self._sent[0] + self.window_s - now
                if wait > 0:
                    await asyncio.sleep(wait)
                self._sent.popleft()
            self._sent.append(time.monotonic())


class HttpClient:
    def __init__(self, timeout_s: float, rate_limit: float, max_connections: int) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._limiter = RateLimiter(rate_limit)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpClient:
        connector = aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=True,
            skip_auto_headers=("Content-Type",),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, req: PreparedRequest) -> HttpResult:
        assert self._session is not None, "HttpClient used outside 'async with'"
        await self._limiter.acquire()
        started = time.monotonic()
        try:
            async with self._session.request(
                req.method, req.url, data=req.body or None, headers=req.headers
            ) as resp:
                body = await resp.read()
                return HttpResult(resp.status, dict(resp.headers), body, time.monotonic() - started)
        except TimeoutError:
            return HttpResult(None, {}, b"", time.monotonic() - started, "timeout")
        except aiohttp.ClientError as exc:
            return HttpResult(
                None, {}, b"", time.monotonic() - started, f"{type(exc).__name__}: {exc}"
            )
