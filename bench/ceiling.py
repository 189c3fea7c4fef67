"""What this machine allows any client: a bare aiohttp loop against the same emulator.

The first target of issue 12 asks 90 % of ``in_flight x 100 records / latency``: it counts
nothing for the call itself. Here ``in_flight`` coroutines post ready-made bodies of 100
records (the benchmark's records, Upload Entity Data's shape) one after another for a few
seconds, against a fresh emulator with the scenario's latency: no Kafka, no checks, no
batching, no response topic. Its rate is what writing a 150 kB body, the emulator
reading and checking it, and the answer's way back leave of the latency's bound on this
machine; the sink's figure is read against it (bench/matrix.py's targets).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from bench import keys
from bench.procs import LIFTED, PARTNER, TOKEN, Emulator

BATCH = 100  # records a call, as the sink's default BATCH_SIZE
SECONDS = 10.0


def bodies(count: int, record_bytes: int, first: int = 0) -> list[bytes]:
    """``count`` Upload Entity Data bodies of BATCH records each, ids from ``first`` on."""
    out = []
    for b in range(count):
        ids = range(first + b * BATCH, first + (b + 1) * BATCH)
        records = b",".join(keys.record(i, f"key-{i % BATCH}", b, record_bytes) for i in ids)
        out.append(b'[{"sourceEntity":"account","records":[' + records + b"]}]")
    return out


async def _post_for(
    session: aiohttp.ClientSession, url: str, ready: list[bytes], until: float
) -> list[float]:
    """Post ``ready``'s bodies in turn, one call at a time, until ``until``; each call's
    seconds. (The emulator runs without storing records: a body may go twice.)"""
    headers = {"apikey": TOKEN, "partnerkey": PARTNER, "Content-Type": "application/json"}
    took: list[float] = []
    while time.monotonic() < until:
        body = ready[len(took) % len(ready)]
        began = time.monotonic()
        async with session.post(url, data=body, headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"bare client: the emulator answered {resp.status}")
        took.append(time.monotonic() - began)
    return took


async def _measure(
    base: str, in_flight: int, ready: list[list[bytes]], seconds: float
) -> tuple[list[float], float]:
    """Each call's seconds, and the seconds from the first call to the last answer."""
    url = f"{base}/v2/ingest/entity/account?mode=incremental"
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.monotonic()
        each = await asyncio.gather(*(_post_for(session, url, r, began + seconds) for r in ready))
        elapsed = time.monotonic() - began
    return [t for took in each for t in took], elapsed


def bare_client(
    latency_ms: int, in_flight: int, record_bytes: int, seconds: float = SECONDS
) -> dict[str, Any]:
    """``in_flight`` calls kept in flight for ``seconds``: calls/s, records/s, and the mean
    time a call took against the emulator's ``latency_ms``."""
    ready = [bodies(4, record_bytes, first=k * 4 * BATCH) for k in range(in_flight)]
    emu = Emulator(latency_ms, LIFTED)
    try:
        took, elapsed = asyncio.run(_measure(emu.base, in_flight, ready, seconds))
    finally:
        emu.stop()
    calls_per_s = len(took) / elapsed
    return {
        "in_flight": in_flight,
        "seconds": seconds,
        "calls_per_s": round(calls_per_s, 1),
        "records_per_s": round(calls_per_s * BATCH),
        "call_ms_mean": round(1000 * sum(took) / max(1, len(took)), 1),
    }
