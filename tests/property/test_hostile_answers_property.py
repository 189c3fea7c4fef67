"""Generated API answers (any status, headers, body, size, depth, redirects, echoed
secrets) thrown at deliver → report: the delivery always ends, every record is either
accepted by a 2xx call or dead-lettered with a reason, exactly once, every response
message is JSON, and no secret reaches any output topic."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from tests.hostile import PARTNER, TOKEN, batch, record, serve_raw, sink

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

STATUSES = [200, 201, 202, 204, 301, 302, 303, 307, 308, 400, 401, 403, 404, 409, 413, 422,
            429, 500, 502, 503, 504, 42, 600, 999]  # fmt: skip
REASONS = {
    "redirected", "rejected-by-api", "retries-exhausted", "duplicate-key",
}  # fmt: skip


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=200),
    st.builds(lambda d: _deep(d), st.integers(1, 3000)),
    st.builds(lambda n: b'{"error":"' + b"x" * n + b'"}', st.integers(0, 1_500_000)),
    st.just(orjson.dumps({"error": f"bad token {TOKEN} / {PARTNER}"})),
    st.just(b'{"errors":[{"id":"ACC00002","message":"Missing required field"}]}'),
    st.just(b'{"message":"Duplicate record with value ACC00003 for primary key field id"}'),
    st.just(b"\xff\xfe not utf-8 \x80"),
)
answers = st.tuples(
    st.sampled_from(STATUSES),
    st.sampled_from([None, "https://evil.example/steal?apikey=" + TOKEN, "\xff", "/v2/other"]),
    st.sampled_from([None, "0", "-5", "1e9", "\u00b2", "Wed, 31 Feb 99999"]),
    bodies,
)


def _http(status: int, location: str | None, retry_after: str | None, body: bytes) -> bytes:
    head = [f"HTTP/1.1 {status:03d} X".encode(), b"Content-Type: application/json"]
    if location is not None:
        head.append(b"Location: " + location.encode("utf-8", "surrogateescape"))
    if retry_after is not None:
        head.append(b"Retry-After: " + retry_after.encode())
    head += [b"Content-Length: %d" % len(body), b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(st.lists(answers, min_size=1, max_size=6))
def test_any_answers_end_in_delivered_or_dead_lettered_records_and_no_secret(
    script: list[tuple[int, str | None, str | None, bytes]],
) -> None:
    asyncio.run(_run(script))


async def _run(script: list[tuple[int, str | None, str | None, bytes]]) -> None:
    statuses: list[int] = []  # as the sink could read them (0: an unreadable answer)

    def answer(n: int) -> bytes:
        # The script, then 200s: every delivery can end.
        status, location, retry_after, body = (
            script[n] if n < len(script) else (200, None, None, b"{}")
        )
        # A 204 with a body breaks HTTP: the client reads a transport error, not a 2xx
        # (Clari may then hold the records; they are sent again, or dead-lettered).
        statuses.append(0 if status == 204 and body else status)
        return _http(status, location, retry_after, body)

    records = [record(i) for i in range(6)]
    async with serve_raw(answer) as url, sink(url) as s:
        bodies_sent: list[bytes] = []
        call = s.delivery.http.call

        async def spy(req: Any) -> Any:
            bodies_sent.append(b"".join(req.pieces) if req.nbytes else b"")
            return await call(req)

        s.delivery.http.call = spy  # type: ignore[method-assign]
        await asyncio.wait_for(s.delivery.deliver(batch(records)), 60)

    accepted: set[str] = set()
    for status, body in zip(statuses, bodies_sent, strict=False):
        if 200 <= status < 300:
            accepted |= {r["id"] for ds in orjson.loads(body) for r in ds["records"]}
    dead = [int(w.headers["clari-sink.source.offset"]) for w in s.dead()]
    assert len(dead) == len(set(dead)), "a record was dead-lettered twice"
    ids = {f"ACC{i:05d}" for i in dead}
    assert not ids & accepted and ids | accepted == {r.rid for r in records}
    for w in s.dead():
        assert w.headers["clari-sink.error.reason"].decode() in REASONS
    for message in s.responses():  # each one parses
        assert isinstance(message, dict)
    out = s.outputs()
    assert TOKEN.encode() not in out and PARTNER.encode() not in out
