"""The HTTP side: one aiohttp session, a client-side rate limit, and plain results.

Nothing here raises for an HTTP status or a network error: every call returns an
:class:`HttpResult` so that each one can be reported and classified the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from sink.endpoint import PreparedRequest

STREAM_SLICE = 256 * 1024  # bodies larger than this are written a slice at a time
# The most of an answer's body read (decompressed). Clari's answers are empty or a few
# error objects; whatever a wrong URL, a proxy or a hostile server sends beyond this is
# left unread (the connection is then closed, not reused), so no answer can fill memory.
# The setting it would be: HTTP_MAX_ANSWER_BYTES.
MAX_BODY_BYTES = 1024 * 1024


@dataclass(slots=True)
class HttpResult:
    status: int | None  # None: no answer (timeout, connection refused or reset)
    headers: dict[str, str]
    body: bytes
    latency_s: float
    error: str | None = None
    truncated: bool = False  # the body is the first MAX_BODY_BYTES of a longer one


class RateLimiter:
    """At most ``rate`` calls in any one-second window, evenly spaced.

    Calls are let through one every ``1.05 / rate`` seconds, never in bursts: Clari counts
    100 requests per second per token and does not say how it counts, and an even pace
    stays under any sliding or fixed window. The 5 % margin absorbs the milliseconds
    between letting a call through and its arrival: with 2 % the emulator still counted
    102-107 calls in its busiest second on a loaded machine (bench, 200 ms a call), and
    7 extra 429s in 207 calls with a 10 ms margin and a sliding window.
    """

    MARGIN = 1.05
    # A call let through late (the event loop was busy: its timers fire 2-3 ms late under
    # load, and 5-30 ms late one time in six on the 2-core bench machine) keeps the
    # schedule if it is late by at most CATCH_UP spacings, so the lateness is not lost:
    # with the schedule restarted at every late call, 100 calls/s became 79 at 200 ms a
    # call (bench uniform200-200ms-limit100); catching up half a spacing gave 8,376-8,454
    # records/s in three runs, a whole one 8,778-8,819 (Pace uses it too: two layers
    # lose twice), two spacings 9,010-9,066 (and distinct keys 9,032-9,054, against
    # 8,777-8,907; A/B, two runs each, 0-2 429s either way). The intake of a poll holds
    # the loop 10-20 ms (1,000 records), and backpressure's refills come in bursts of
    # such polls. Calls then go back to back, so a second may hold rate / MARGIN + the
    # spacings caught up + 1: the catch-up is cut where that would pass the rate (a
    # member's share of 33 calls/s catches up one spacing, not two; see catch_up()).
    CATCH_UP = 2.0

    def __init__(self, rate: float) -> None:
        self.spacing_s = self.MARGIN / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    def set_rate(self, rate: float) -> None:
        """A new rate from the next call on (this member's share changed)."""
        self.spacing_s = self.MARGIN / rate

    async def acquire(self) -> None:
        async with self._lock:
            wait = self._next - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._next = next_slot(self._next, time.monotonic(), self.spacing_s)


def catch_up(spacing_s: float) -> float:
    """Spacings a late call may catch up at this pace: CATCH_UP, or what the margin
    (rate - rate / MARGIN calls a second) holds: 2 at 100 calls/s, 1.38 at 50, 0.59 at
    33, none below 21 (at least one let a second hold 21 calls of a share of 20)."""
    room = (RateLimiter.MARGIN - 1) / spacing_s - 1  # extra calls a second, less the late one
    return min(RateLimiter.CATCH_UP, max(0.0, room))


def next_slot(scheduled: float, now: float, spacing_s: float) -> float:
    """When the call after one let through ``now`` may go (see RateLimiter.CATCH_UP)."""
    return max(scheduled, now - spacing_s * catch_up(spacing_s)) + spacing_s


class HttpClient:
    def __init__(self, timeout_s: float, rate_limit: float, max_connections: int) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._limiter = RateLimiter(rate_limit)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def set_rate(self, rate: float) -> None:
        self._limiter.set_rate(rate)

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
            data: bytes | AsyncIterator[bytes | memoryview] | None = None
            headers = req.headers
            if 0 < req.nbytes <= STREAM_SLICE:
                data = req.body
            elif req.nbytes > STREAM_SLICE:
                # Streamed piece by piece: otherwise the pieces are joined into one buffer,
                # aiohttp joins headers and body into another, and asyncio copies what the
                # socket does not take at once: three copies of a 10 MB bulk file.
                data = _stream(req.pieces)
                headers = {**req.headers, "Content-Length": str(req.nbytes)}
            # Never follow a redirect, for calls and job-status polls alike: it would send
            # the credential headers to the host it names (see retry.Verdict.REDIRECT).
            async with self._session.request(
                req.method, req.url, data=data, headers=headers, allow_redirects=False
            ) as resp:
                body, truncated = await _read_capped(resp, MAX_BODY_BYTES)
                return HttpResult(
                    resp.status,
                    dict(resp.headers),
                    body,
                    time.monotonic() - started,
                    truncated=truncated,
                )
        except TimeoutError:
            return HttpResult(None, {}, b"", time.monotonic() - started, "timeout")
        except aiohttp.ClientError as exc:
            return HttpResult(
                None, {}, b"", time.monotonic() - started, f"{type(exc).__name__}: {exc}"
            )


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    """The body's first ``cap`` bytes, and whether there was more. One byte past the cap
    is read to tell a body of exactly ``cap`` bytes from a longer one."""
    chunks: list[bytes] = []
    size = 0
    while size <= cap:
        chunk = await resp.content.read(cap + 1 - size)  # at most that much; b"" at the end
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    body = b"".join(chunks)
    if size > cap:
        return body[:cap], True
    return body, False


async def _stream(pieces: list[bytes]) -> AsyncIterator[bytes | memoryview]:
    for piece in pieces:
        if len(piece) <= STREAM_SLICE:
            yield piece
            continue
        view = memoryview(piece)  # a CSV or XML body is one piece
        for start in range(0, len(view), STREAM_SLICE):
            yield view[start : start + STREAM_SLICE]
