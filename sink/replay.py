"""Read records back from Kafka by offset.

While a bulk job runs, Clari holds the file and the sink keeps only the records' offsets:
holding the records for every job in progress would tie the sink's memory, and with it
its throughput, to how long Clari takes over a job. The offsets stay uncommitted until
the job ends, so Kafka still has the records; if the job fails (to be submitted again)
or is refused (to be dead-lettered), they are read back here with a separate consumer
that joins no group and commits nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from confluent_kafka import Consumer, KafkaError, TopicPartition

from sink.config import Settings
from sink.consumer import close_within, consumer_config
from sink.decoding import RecordError, Shaper, record_id
from sink.records import Offsets, SinkRecord

log = logging.getLogger(__name__)
CLOSE_TIMEOUT_S = 5.0  # it joined no group and commits nothing: close() has little to do


class ReplayError(Exception):
    """Records that could not be read back (gone from the topic, or Kafka unreachable)."""


class Replayer:
    """Reads given offsets back, shaped again with the sink's own shaper."""

    def __init__(self, settings: Settings, shaper: Shaper, timeout_s: float = 120.0) -> None:
        self.s = settings
        self.shaper = shaper
        self.timeout_s = timeout_s
        self.stopping = threading.Event()  # set by the stop: a read-back in progress ends

    async def fetch(self, offsets: Offsets) -> list[SinkRecord]:
        """The records at ``offsets``, shaped as when first consumed, in partition and
        offset order (records sharing a key share a partition: their order holds)."""
        return await asyncio.to_thread(self._fetch, offsets)

    def _fetch(self, offsets: Offsets) -> list[SinkRecord]:
        # The group consumer's connection, security and KAFKA_CONSUMER_* properties
        # (sink/kafka_config.py): it reads the same topics from the same brokers.
        conf = consumer_config(self.s, group=False)
        conf["group.id"] = f"{self.s.kafka_group_id}.replay"
        conf["enable.partition.eof"] = True
        conf["auto.offset.reset"] = "error"  # a record gone from the topic is an error here
        wanted = {tp: set(offs) for tp, offs in offsets.items() if offs}
        last = {tp: max(offs) for tp, offs in wanted.items()}
        found: dict[tuple[str, int], list[SinkRecord]] = {tp: [] for tp in wanted}
        open_tps = set(wanted)
        consumer = Consumer(conf)
        try:
            consumer.assign([TopicPartition(t, p, min(wanted[(t, p)])) for t, p in wanted])
            deadline = time.monotonic() + self.timeout_s
            while open_tps and time.monotonic() < deadline and not self.stopping.is_set():
                for msg in consumer.consume(1_000, 0.5):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            open_tps.discard((msg.topic() or "", msg.partition() or 0))
                            continue
                        raise ReplayError(f"reading records back failed: {err}")
                    record = SinkRecord.from_message(msg)
                    tp = (record.topic, record.partition)
                    if tp not in open_tps:
                        continue
                    if record.offset in wanted[tp]:
                        found[tp].append(record)
                    if record.offset >= last[tp]:
                        open_tps.discard(tp)
        finally:
            if not close_within(consumer, CLOSE_TIMEOUT_S):
                log.warning("the read-back consumer did not close in time (broker away?)")
        missing = sum(len(wanted[tp]) - len(found[tp]) for tp in wanted)
        if missing:
            raise ReplayError(
                f"{missing} record(s) could not be read back from Kafka "
                f"(partitions {sorted(wanted)}); they stay uncommitted"
            )
        out: list[SinkRecord] = []
        for tp in sorted(found):
            for record in found[tp]:
                try:
                    record.rid = record_id(self.shaper.shape(record), self.s.clari_id_field)
                except RecordError as exc:  # it was sent once, so it shaped once
                    raise ReplayError(f"record {record.where} no longer shapes: {exc}") from None
                out.append(record)
        log.info("read %d record(s) back from Kafka", len(out))
        return out
