"""What keeps its order at the API: a message key's records (the default) or a record
id's (SINK_ORDER_BY=id), on the real broker and the emulator, through retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from devkit.sample_data import crm_record
from tests.support import Emulator, create_topic, produce, run_sink, unique

pytestmark = pytest.mark.integration


def _activity_stream(kafka: str, n: int) -> tuple[str, list[dict[str, Any]]]:
    """Activities keyed by their account, as CRM topics are: one hot account has them
    all, each activity its own id, and every tenth one updated again later."""
    records = [crm_record("activity", i % 300) | {"version": i // 300} for i in range(n)]
    topic = create_topic(kafka, unique("activities"), 1)
    produce(kafka, topic, ((b"account-0001", orjson.dumps(r)) for r in records))
    return topic, records


def _accepted(emulator: Emulator) -> list[dict[str, Any]]:
    return [r["record"] for r in emulator.records("account")]


@pytest.mark.parametrize("order_by", ["key", "id"])
def test_one_hot_key_goes_one_call_at_a_time_unless_ordered_by_id(
    kafka: str, emulator: Emulator, logs: Path, order_by: str
) -> None:
    topic, sent = _activity_stream(kafka, 1_200)
    faults = emulator.state.faults
    faults.latency_ms, faults.latency_jitter_ms = 50, 100  # calls overtake each other
    faults.rate_500 = 0.15  # retried batches must keep the order too
    run_sink(
        kafka, emulator, logs, topic,
        SINK_ORDER_BY=order_by, BATCH_LINGER_MS=50, RETRY_BACKOFF_INITIAL_MS=20,
    )  # fmt: skip

    accepted = _accepted(emulator)
    # Every version of every record arrived, and each id's versions in order.
    assert sorted((r["id"], r["version"]) for r in accepted) == sorted(
        (r["id"], r["version"]) for r in sent
    )
    versions: dict[str, list[int]] = {}
    for r in accepted:
        versions.setdefault(r["id"], []).append(r["version"])
    assert all(v == sorted(v) for v in versions.values())
    in_flight = emulator.state.in_flight.max
    if order_by == "key":
        # The key's records reach the API in offset order: one call at a time.
        assert [(r["version"], r["id"]) for r in accepted] == [
            (r["version"], r["id"]) for r in sent
        ]
        assert in_flight == 1
    else:
        assert in_flight > 1  # the one key no longer serialises the sink
