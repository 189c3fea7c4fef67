"""Records too large for the dead-letter topic, against a real broker (issue 13): a 2 MB
record the API rejects and a 20 MB record the sink refuses are written cut to fit, with
their source headers and the truncation flag, and the partition commits to its end
(before, MSG_SIZE_TOO_LARGE was retried for ever and nothing was committed again)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tests.delivery_check import keyed
from tests.support import (
    Emulator,
    SinkProcess,
    all_committed,
    consume_all,
    headers_of,
    responses,
    sink_env,
    unique,
    wait_until,
)

pytestmark = pytest.mark.integration


def _topic(kafka: str, name: str, max_message_bytes: int) -> str:
    admin = AdminClient({"bootstrap.servers": kafka})
    config = {"max.message.bytes": str(max_message_bytes)}
    for fut in admin.create_topics([NewTopic(name, 1, 1, config=config)]).values():
        fut.result(30)
    wait_until(lambda: name in admin.list_topics(timeout=5).topics, 30, what=f"topic {name}")
    return name


def test_records_too_large_for_the_dead_letter_topic_are_written_cut_and_committed(
    kafka: str, emulator: Emulator, logs: Path
) -> None:
    topic = _topic(kafka, unique("big"), 25_000_000)
    env = sink_env(kafka, emulator, topic)
    # A dead-letter topic that takes less than the producer's 1 MB: the sink must ask it.
    _topic(kafka, env["DLQ_TOPIC"], 300_000)
    msgs = [keyed(i, 10) for i in range(10)]
    rejected = orjson.loads(msgs[3][1])
    del rejected["createdAt"]  # refused by Clari's record contract, before sending
    rejected["blob"] = "x" * 2_000_000
    msgs[3] = (msgs[3][0], orjson.dumps(rejected))
    msgs[6] = (msgs[6][0], orjson.dumps({**orjson.loads(msgs[6][1]), "blob": "y" * 20_000_000}))
    producer = Producer({"bootstrap.servers": kafka, "message.max.bytes": 30_000_000})
    for key, value in msgs:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(60) == 0

    SinkProcess(env, "--until-drained", log_dir=logs).run_to_end(180)

    dead = {
        int(headers_of(m)["clari-sink.source.offset"]): m
        for m in consume_all(kafka, env["DLQ_TOPIC"], expect=2)
    }
    assert sorted(dead) == [3, 6]
    reasons = {o: headers_of(m)["clari-sink.error.reason"] for o, m in dead.items()}
    assert reasons == {3: b"missing-timestamp", 6: b"record-too-large"}
    for offset, m in dead.items():
        h = headers_of(m)
        original = msgs[offset][1]
        assert h["clari-sink.truncated"] == b"true"
        assert h["clari-sink.original.bytes"] == str(len(original)).encode()
        assert h["clari-sink.source.topic"] == topic.encode()
        assert 0 < len(m.value()) < 300_000 and original.startswith(m.value())
        assert m.key() == msgs[offset][0]
    assert len(emulator.records()) == 8
    assert all(isinstance(r["outcome"], str) for r in responses(kafka, env))
    assert all_committed(kafka, env, topic)
