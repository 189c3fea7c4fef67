"""The value of ``isLastBatch`` for a call, decided when the call is sent."""

from __future__ import annotations

from sink.batching import Batcher
from sink.consumer import KafkaSource
from sink.flow import Dispatcher
from sink.offsets import OffsetTracker


class LastBatch:
    def __init__(
        self, setting: str, batcher: Batcher, flow: Dispatcher, tracker: OffsetTracker
    ) -> None:
        self.setting = setting  # true, false or auto (CLARI_IS_LAST_BATCH)
        self.batcher = batcher
        self.flow = flow
        self.tracker = tracker
        self.source: KafkaSource | None = None  # set once the consumer exists

    def now(self) -> bool:
        if self.setting != "auto":
            return self.setting == "true"
        # Auto: true only for the call that catches up with the end of every assigned
        # partition, with nothing else buffered or waiting.
        if self.batcher.open_batches or self.flow.queues or self.source is None:
            return False
        for tp in self.source.assignment:
            high = self.source.cached_high_watermark(tp)
            if high is not None and high > 0 and self.tracker.consumed_to(tp) < high:
                return False
        return True
