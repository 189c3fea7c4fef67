"""One token's rate shared by the members of a consumer group, through a join."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.delivery_check import check, ids, keyed
from tests.support import (
    TOKEN,
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


def test_two_members_stay_within_one_tokens_rate_while_the_second_joins(
    kafka: str, emulator: Emulator, logs: Path
) -> None:
    """The first member sends alone at the whole rate, hands three partitions over when
    the second joins (with what it buffered for them: at its whole share, since no one
    else may send them until it lets them go), and each then sends at half: at no
    moment do the two pass the token's rate at the API."""
    first, more = 3_000, 6_000
    topic = create_topic(kafka, unique("shared"), partitions=6)
    produce(kafka, topic, (keyed(i, 200) for i in range(first)))
    emulator.state.faults.latency_ms = 50
    emulator.state.rate_limit = 50  # Clari's count, for this token
    # 45 of the 50: the limiter's own 5 % margin, and room for two processes' timers.
    env = sink_env(kafka, emulator, topic, HTTP_RATE_LIMIT=45, BATCH_SIZE=10)

    a = SinkProcess(env, log_dir=logs).start()
    wait_until(lambda: len(emulator.records()) >= 300, 60, what="the first member delivering")
    b = SinkProcess(env, log_dir=logs).start()
    wait_until(
        lambda: f"partitions assigned: {topic}" in b.output(), 60, what="the second member's share"
    )
    # A backlog for both: each sends as fast as its share allows.
    produce(kafka, topic, (keyed(i, 200) for i in range(first, first + more)))
    wait_all_committed(kafka, env, topic, 120)
    for member in (a, b):
        member.signal(signal.SIGTERM)
        assert member.wait(60) == 0, member.output()

    assert "partitions revoked" in a.output()  # a rebalance really happened
    out = check(emulator, ids(0, first + more))
    assert out.lost == 0 and out.duplicated == 0 and out.reordered == 0
    # Without sharing (HTTP_RATE_SHARING=none) both send 45 calls a second: 429s.
    assert emulator.state.counters.get("rate_limited", 0) == 0
    assert emulator.state.max_calls_in_second[TOKEN] <= 50
    assert "rate share: 22.5 of 45.0 calls/s" in b.output()
