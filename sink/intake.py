"""The per-record hot path: a poll's messages tracked, checked or shaped, and batched.

Each step takes the whole poll, so that per-record work happens in C where it can
(measured in bench/run.py).
"""

from __future__ import annotations

import logging
from collections import Counter

from confluent_kafka import KafkaError, Message

from sink.batching import Batcher
from sink.decoding import Shaper
from sink.flow import Dispatcher
from sink.health import Health
from sink.metrics import Metrics
from sink.offsets import OffsetTracker
from sink.records import SinkRecord, message_offsets
from sink.rejects import Rejects

log = logging.getLogger(__name__)


class Intake:
    def __init__(
        self,
        tracker: OffsetTracker,
        shaper: Shaper,
        batcher: Batcher,
        flow: Dispatcher,
        rejects: Rejects,
        metrics: Metrics,
        health: Health,
    ) -> None:
        self.tracker = tracker
        self.shaper = shaper
        self.batcher = batcher
        self.flow = flow
        self.rejects = rejects
        self.metrics = metrics
        self.health = health
        self.consumed = 0

    def handle(self, msgs: list[Message]) -> None:
        if not msgs:
            return
        if any(map(Message.error, msgs)):
            for msg in msgs:
                err = msg.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", err)
            msgs = [m for m in msgs if m.error() is None]
        # Tracked per partition once per poll; nothing resolves before this (deliveries
        # start later, and rejections are handled below).
        offsets = message_offsets(msgs)
        per_topic: Counter[str] = Counter()
        for tp, offs in offsets.items():
            self.tracker.track_many(tp, offs)
            per_topic[tp[0]] += len(offs)
        # A JSON record sent as it is in arrival-order batches needs only checking and its
        # id, and travels as the consumed message itself; otherwise it is decoded (and
        # shaped, when attributes are dropped) into a SinkRecord.
        probed = None
        if not self.batcher.needs_data:
            probed = self.shaper.probe_messages(msgs, self.batcher.id_field)
        if probed is not None:
            passed, rids, rejected = probed
            # The poll's offsets are those of the messages that passed if none was refused.
            known = offsets if len(passed) == len(msgs) else None
            closed, refused = self.batcher.add_messages(passed, rids, known)
        else:
            consumed = list(map(SinkRecord.from_message, msgs))
            shaped, datas, rejected = self.shaper.shape_many(consumed)
            closed, refused = self.batcher.add_many(shaped, datas)
        self.flow.add(closed)
        for record, error in rejected + refused:
            self.rejects.reject(record, error)
        for topic, count in per_topic.items():
            self.consumed += count
            self.metrics.consumed.labels(topic=topic).inc(count)
        if per_topic:
            self.health.clear("kafka")
