"""A topic written in transactions (Kafka Streams or Connect with exactly-once, Flink):
its commit markers and aborted records take offsets that no read_committed poll returns."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from devkit.sample_data import crm_record
from tests.support import (
    Emulator,
    SinkProcess,
    committed,
    create_topic,
    end_offsets,
    sink_env,
    unique,
)

pytestmark = pytest.mark.integration


def test_a_transactional_topic_is_drained_and_committed_to_its_end(
    kafka: str, emulator: Emulator, logs: Path
) -> None:
    """The sink commits past each partition's last commit marker: --until-drained ends
    (it waited for ever, one offset short of the end), and the group's lag reaches 0."""
    topic = create_topic(kafka, unique("txn"), partitions=2)
    producer = Producer({"bootstrap.servers": kafka, "transactional.id": unique("txn-writer")})
    producer.init_transactions(30)
    ids = iter(range(1_000))
    kept: list[str] = []
    for commit, count in ((True, 30), (False, 10), (True, 20)):
        producer.begin_transaction()
        for _ in range(count):
            record = crm_record("account", next(ids))
            producer.produce(topic, key=str(record["id"]).encode(), value=orjson.dumps(record))
            if commit:
                kept.append(str(record["id"]))
        assert producer.flush(30) == 0  # in the log, aborted or not
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
    env = sink_env(kafka, emulator, topic, BATCH_LINGER_MS=100)

    SinkProcess(env, "--until-drained", log_dir=logs).run_to_end(timeout=90)

    got = [str(r["record"]["id"]) for r in emulator.records("account")]
    assert sorted(got) == sorted(kept)  # the aborted transaction's records never go
    ends = end_offsets(kafka, topic)
    assert committed(kafka, env["KAFKA_GROUP_ID"], topic) == ends
    # Ten aborted records and a marker per transaction and partition: the ends lie past
    # the last record read.
    assert sum(ends.values()) == 30 + 10 + 20 + 3 * 2
