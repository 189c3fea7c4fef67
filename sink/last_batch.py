"""The value of ``isLastBatch`` for a call, decided when the call is sent.

``true`` and ``false`` are sent as set. Under ``auto`` a call says true when it catches
up: nothing else is open or waiting and every assigned partition is read to its end.

An initial load (``mode=initial``) is stricter, because Clari ends the load at the first
call with isLastBatch=true and refuses ``initial`` after it: the closing call

- waits until every earlier call of the load has its final answer (for bulk, its job
  ended), and is never in flight with another call (see ``holds``);
- is sent only by a member holding every partition of the topics: a member reading part
  of a load cannot know when the whole load is done;
- is sent once: after Clari accepted it, later calls say false. If the sink stops before
  closing, the next run closes the load with its call that catches up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sink.batching import Batcher
from sink.consumer import KafkaSource
from sink.flow import Dispatcher
from sink.offsets import OffsetTracker
from sink.records import Batch

log = logging.getLogger(__name__)


class LastBatch:
    def __init__(
        self,
        setting: str,
        initial_load: bool,
        batcher: Batcher,
        flow: Dispatcher,
        tracker: OffsetTracker,
        partitions_total: Callable[[], int | None],
    ) -> None:
        self.setting = setting  # true, false or auto (Settings.is_last_batch)
        self.initial_load = initial_load and setting == "auto"
        self.batcher = batcher
        self.flow = flow
        self.tracker = tracker
        self.partitions_total = partitions_total  # all partitions of the topics, if known
        self.source: KafkaSource | None = None  # set once the consumer exists
        self.closed = False  # an initial load's closing call was accepted
        self._told_partial = False
        flow.holds = self.holds

    def now(self) -> bool:
        if self.setting != "auto":
            return self.setting == "true"
        if not self.initial_load:
            return self._caught_up()
        return not self.closed and not self.flow.in_flight and self._closes()

    def holds(self, batch: Batch) -> bool:
        """Whether ``batch`` must wait before it starts: it would close an initial load
        while calls are in flight."""
        if not self.initial_load or self.closed or not self.flow.in_flight:
            return False
        return self._closes()

    def accepted(self, batch: Batch) -> None:
        """Clari accepted ``batch`` (every record of it, or the rest after dead letters)."""
        if batch.is_last and self.initial_load and not self.closed:
            self.closed = True
            log.info("initial load closed: the call with isLastBatch=true was accepted")

    def _closes(self) -> bool:
        return self._caught_up() and self._whole_topics()

    def _caught_up(self) -> bool:
        """Nothing buffered or waiting, and every assigned partition read to its end."""
        flow = self.flow
        if self.batcher.open_batches or flow.queues or flow.cut or self.source is None:
            return False
        strict = self.initial_load  # an unknown end or position is not an end
        for tp in self.source.assignment:
            high = self.source.cached_high_watermark(tp)
            if high is None:
                if strict:
                    return False
                continue
            if high <= 0:
                continue
            read = max(self.tracker.consumed_to(tp), self.source.position(tp) or -1)
            if read < high:
                return False
        return True

    def _whole_topics(self) -> bool:
        assert self.source is not None
        total = self.partitions_total()
        held = len(self.source.assignment)
        if total is not None and held >= total:
            return True
        if not self._told_partial:
            self._told_partial = True
            log.error(
                "initial load caught up, but this member holds %d of %s partitions: another "
                "member of the group reads the rest, so no member can know when the load "
                "ends; it is not closed (isLastBatch stays false). Run a single replica for "
                "an initial load; it closes the load when it catches up holding them all",
                held,
                total if total is not None else "an unknown number of",
            )
        return False
