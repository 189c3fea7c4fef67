"""While the broker is gone (issue 18): the sink says so once, stops on time, and
delivers everything once the broker is back.

These tests stop a broker, so they run their own (the session's broker stays up for
the other tests running meanwhile), started once for the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException

from devkit import kafka_local
from devkit.kafka_local import Broker, free_port
from sink.config import load_settings
from sink.consumer import KafkaSource
from sink.health import Health
from sink.offset_commits import COMMIT_WAIT_S
from tests.delivery_check import check, ids, keyed
from tests.support import (
    Emulator,
    SinkProcess,
    create_topic,
    produce,
    sink_env,
    unique,
    wait_all_committed,
    wait_until,
)

pytestmark = pytest.mark.integration

OUTAGE_S = 60  # the scenario: long enough for librdkafka's reconnect storms
SHUTDOWN_TIMEOUT_S = 5
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+)\s+(\S+): (.*)$")


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    started = kafka_local.start(tmp_path_factory.mktemp("outage-kafka"))
    try:
        yield started
    finally:
        started.stop()


def running(broker: Broker) -> Broker:
    """``broker``, started again if an earlier test left it stopped."""
    if broker.process is None or broker.process.poll() is not None:
        broker.restart()
    return broker


def loud_lines(text: str) -> list[str]:
    """The log lines at INFO and above (text format), without their timestamps."""
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m and m.group(1) in ("INFO", "WARNING", "ERROR", "CRITICAL"):
            out.append(f"{m.group(1)} {m.group(2)}: {m.group(3)}")
    return out


def admin_get(port: int, path: str, timeout: float = 5) -> Any:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as err:
        body = err.read()
    return body.decode() if path == "/metrics" else json.loads(body)


def test_a_broker_outage_is_logged_once_and_delivery_resumes_with_nothing_lost(
    own_broker: Broker, emulator: Emulator, logs: Path
) -> None:
    broker = running(own_broker)
    kafka = broker.bootstrap
    n_before, n_after = 3_000, 2_000
    topic = create_topic(kafka, unique("outage"), partitions=3)
    produce(kafka, topic, (keyed(i, 100) for i in range(n_before)))
    emulator.state.faults.latency_ms = 50  # calls in flight when the broker goes
    port = free_port()
    # A short session: the coordinator, back, forgets the member in 6 s, not 45.
    env = sink_env(kafka, emulator, topic, ADMIN_PORT=port, KAFKA_SESSION_TIMEOUT_MS=6_000)
    sink = SinkProcess(env, log_dir=logs).start()
    assert sink.proc is not None
    wait_until(lambda: len(emulator.records()) > 500, 30, what="delivery under way")
    before = sink.output()
    broker.stop()
    stopped_at = time.monotonic()
    emulator.state.faults.latency_ms = 0
    wait_until(
        lambda: "kafka" in admin_get(port, "/readyz").get("problems", {}),
        20,
        what="/readyz reporting the broker",
    )
    problem = admin_get(port, "/readyz")["problems"]["kafka"]
    assert "clari_sink_healthy 0.0" in admin_get(port, "/metrics")
    # The probes answer all along: Kubernetes gives a liveness probe 1 s by default.
    # (A cached watermark read on the event loop once froze it for 5 s while a commit
    # waited for the gone broker.)
    slowest = 0.0
    while time.monotonic() - stopped_at < OUTAGE_S:
        asked = time.monotonic()
        admin_get(port, "/healthz", timeout=3)
        slowest = max(slowest, time.monotonic() - asked)
        time.sleep(0.5)
    assert slowest < 1.0, f"/healthz took {slowest:.1f} s during the outage"
    assert sink.proc.poll() is None, sink.output()
    broker.restart()
    produce(kafka, topic, (keyed(i, 100) for i in range(n_before, n_before + n_after)))
    n = n_before + n_after
    wait_until(
        lambda: len({r["record"]["id"] for r in emulator.records()}) >= n,
        120,
        what="everything delivered after the outage",
    )
    wait_all_committed(kafka, env, topic, 60)
    wait_until(lambda: admin_get(port, "/readyz")["status"] == "ready", 30, what="ready again")
    during = sink.output()[len(before) :]
    sink.signal(signal.SIGTERM)
    assert sink.wait(60) == 0, sink.output()

    out = check(emulator, ids(0, n))
    assert out.lost == 0 and out.invented == 0, sink.output()
    lines = loud_lines(during)
    shown = "\n".join(lines)
    # What an operator reads about a minute without a broker: it went (where, why), a
    # reminder, it is back (after how long); the group's own account of a rejoin, if
    # the coordinator dropped the member meanwhile. Not a line per connection attempt.
    assert len(lines) <= 8, f"{len(lines)} lines at INFO and above:\n{shown}"
    gone = [x for x in lines if "Kafka broker unreachable (" in x]
    back = [x for x in lines if "Kafka broker reachable again (" in x]
    assert len(gone) == 1 and kafka in gone[0], shown
    assert len(back) == 1 and re.search(r"after \d+ s", back[0]), shown
    assert not [x for x in lines if "_TRANSPORT" in x or " FAIL " in x], shown
    assert problem["message"] and problem["since"] and problem["failures"] >= 1


def test_sigterm_with_the_broker_stopped_exits_within_the_shutdown_timeout(
    own_broker: Broker, emulator: Emulator, logs: Path
) -> None:
    broker = running(own_broker)
    kafka = broker.bootstrap
    topic = create_topic(kafka, unique("gone"), partitions=3)
    produce(kafka, topic, (keyed(i, 50) for i in range(20_000)))
    env = sink_env(kafka, emulator, topic, SINK_SHUTDOWN_TIMEOUT_S=SHUTDOWN_TIMEOUT_S)
    sink = SinkProcess(env, log_dir=logs).start()
    assert sink.proc is not None
    wait_until(lambda: len(emulator.records()) >= 500, 60, what="delivery under way")
    # Answers slower than the stop: calls in flight, records buffered, commits due.
    emulator.state.faults.latency_ms = 8_000
    broker.stop()  # left stopped: a later test starts it again
    wait_until(lambda: "Kafka broker unreachable" in sink.output(), 30, what="the outage seen")
    started = time.monotonic()
    sink.signal(signal.SIGTERM)
    code = sink.wait(SHUTDOWN_TIMEOUT_S + 30)
    took = time.monotonic() - started
    out = sink.output()
    assert took <= SHUTDOWN_TIMEOUT_S + 2, f"stopped in {took:.1f} s:\n{out}"
    # Not clean: the consumer could not leave its group; exit 3 says so, and the log why.
    assert code == 3, f"exit {code}:\n{out}"
    assert "did not close within" in out and "sink stopped (not cleanly" in out, out
    assert "deliveries did not finish in time" in out, out  # work in flight, given up
    # and none started after that: the stop is the last thing the sink says.
    assert "sink stopped (not cleanly" in out.strip().splitlines()[-1], out


def _source(kafka: str, emulator: Emulator, topic: str, health: Health) -> KafkaSource:
    settings = load_settings(**sink_env(kafka, emulator, topic))
    source = KafkaSource(settings, lambda err: None, health)
    source.subscribe(lambda tps: None, lambda tps: None, lambda tps: None)
    return source


async def _read_all(source: KafkaSource, n: int) -> dict[tuple[str, int], int]:
    """Consume ``n`` records; the position after each partition's last one."""
    ends: dict[tuple[str, int], int] = {}
    deadline = time.monotonic() + 60
    while sum(ends.values()) < n and time.monotonic() < deadline:
        for m in await source.consume(500, 0.5):
            ends[(str(m.topic()), int(m.partition() or 0))] = int(m.offset() or 0) + 1
    assert sum(ends.values()) == n, ends
    return ends


def test_a_commit_waiting_for_a_gone_broker_does_not_hold_reading(
    own_broker: Broker, emulator: Emulator
) -> None:
    """The main loop's commit is asked for, not waited for: while its answer is due, the
    consumer keeps polling (a synchronous commit held every poll, up to the session
    timeout when the broker had just gone), and once the broker is back it lands."""
    broker = running(own_broker)
    kafka = broker.bootstrap
    topic = create_topic(kafka, unique("commit"), partitions=2)
    produce(kafka, topic, (keyed(i, 10) for i in range(200)))
    health = Health(str)

    async def answer(source: KafkaSource, answered: asyncio.Future[None], within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while not answered.done() and time.monotonic() < deadline:
            await source.consume(100, 0.2)
        assert answered.done(), f"no answer to a commit within {within_s} s"

    async def scenario() -> None:
        source = _source(kafka, emulator, topic, health)
        ends = await _read_all(source, 200)
        half = {tp: end // 2 for tp, end in ends.items()}
        answered = await source.commit_async(half)
        assert not answered.done()  # asked; the answer comes with a poll
        await answer(source, answered, 30)
        answered.result()
        assert await source.committed(list(ends)) == half

        broker.stop()
        asked = time.monotonic()
        answered = await source.commit_async(ends)
        assert time.monotonic() - asked < 0.5
        # One at a time, asked or waited for: none lands out of order.
        with pytest.raises(KafkaException, match="still waits"):
            await source.commit_async(ends)
        with pytest.raises(KafkaException, match="still waits"):
            await source.commit(ends)
        slowest = 0.0
        while time.monotonic() - asked < COMMIT_WAIT_S - 0.5:
            polled = time.monotonic()
            await source.consume(100, 0.2)
            slowest = max(slowest, time.monotonic() - polled)
        # (A synchronous commit held every poll for all of it, and longer.)
        assert slowest < 1.0, f"a poll took {slowest:.1f} s behind the commit"
        while time.monotonic() - asked < COMMIT_WAIT_S + 1:
            await source.consume(100, 0.2)  # (then probing the broker, 1 s at most)
        assert health.down("kafka")  # no answer within COMMIT_WAIT_S of polling: said

        broker.restart()
        await answer(source, answered, 90)
        # Landed, or failed and asked again, as the committer does at its next interval
        # (a long restart can outlast the member's session: it joins again first).
        deadline = time.monotonic() + 60
        while await source.committed(list(ends)) != ends and time.monotonic() < deadline:
            with contextlib.suppress(KafkaException):
                again = await source.commit_async(ends)
                await answer(source, again, 30)
            await source.consume(100, 0.5)
        assert await source.committed(list(ends)) == ends
        assert not health.down("kafka")
        assert await source.close(10)

    asyncio.run(scenario())
