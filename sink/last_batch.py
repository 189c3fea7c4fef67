"""The value of ``isLastBatch`` for a call, decided when the call is sent.

``true`` and ``false`` are sent as set. Under ``auto`` a call says true when it catches
up: nothing else is open or waiting and every assigned partition is read to its end.

An initial load (``mode=initial``) is stricter, because Clari ends the load of an entity
at its first call with isLastBatch=true and refuses ``initial`` for it after that. Each
entity's load (its topics, CLARI_TOPIC_ENTITIES) is closed by one call, which

- waits until every earlier call of that entity has its final answer (for bulk, its job
  ended), and is never in flight with another call of it (see ``holds``);
- is sent only by a member holding every partition of the entity's topics: a member
  reading part of a load cannot know when the whole load is done;
- is sent once: after Clari accepted it, later calls of the entity say false. If the
  sink stops before closing, the next run closes the load with the call that catches up.
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
        entity_of: Callable[[str], str],
    ) -> None:
        self.setting = setting  # true, false or auto (Settings.is_last_batch)
        self.initial_load = initial_load and setting == "auto"
        self.batcher = batcher
        self.flow = flow
        self.tracker = tracker
        self.entity_of = entity_of  # a topic's entity
        self.source: KafkaSource | None = None  # set once the consumer exists
        self.closed: set[str] = set()  # entities whose closing call was accepted
        self._told_partial: set[str] = set()
        flow.holds = self.holds

    def now(self, batch: Batch) -> bool:
        if self.setting != "auto":
            return self.setting == "true"
        if not self.initial_load:
            return self._caught_up(None)
        entity = self._entity(batch)
        if entity in self.closed:
            return False
        topics = self._topics(entity)
        return self._closes(entity, topics) and self._alone(entity, topics, batch)

    def holds(self, batch: Batch) -> bool:
        """Whether ``batch`` must wait before it starts: it would close its entity's
        initial load while other records of that entity are not resolved yet (calls in
        flight, dead letters being written)."""
        if not self.initial_load:
            return False
        entity = self._entity(batch)
        if entity in self.closed:
            return False
        topics = self._topics(entity)
        return self._closes(entity, topics) and not self._alone(entity, topics, batch)

    def accepted(self, batch: Batch) -> None:
        """Clari accepted ``batch`` (every record of it, or the rest after dead letters)."""
        if batch.is_last and self.initial_load and batch.lanes:
            entity = self._entity(batch)
            if entity not in self.closed:
                self.closed.add(entity)
                log.info("initial load of %s closed: its isLastBatch=true call accepted", entity)

    def _assigned(self) -> list[tuple[str, int]]:
        """The assignment, copied at once: the Kafka thread changes it in rebalance
        callbacks while the event loop may be reading it (list() of a set holds the GIL)."""
        assert self.source is not None
        return list(self.source.assignment)

    def _entity(self, batch: Batch) -> str:
        return self.entity_of(batch.lanes[0][0])

    def _topics(self, entity: str) -> set[str]:
        assert self.source is not None
        return {t for t in self.source.settings.kafka_topics if self.entity_of(t) == entity}

    def _alone(self, entity: str, topics: set[str], batch: Batch) -> bool:
        """No other call of ``entity`` in flight, and every record of its topics but
        ``batch``'s resolved: the close is the load's last word."""
        for other in self.flow.in_flight.values():
            if other is not batch and other.lanes and self._entity(other) == entity:
                return False
        assert self.source is not None
        tps = [tp for tp in self._assigned() if tp[0] in topics]
        return sum(map(self.tracker.unresolved, tps)) <= batch.count

    def _closes(self, entity: str, topics: set[str]) -> bool:
        """The entity's topics are read to their ends, held whole by this member."""
        return self._caught_up(topics) and self._whole_topics(entity, topics)

    def _caught_up(self, topics: set[str] | None) -> bool:
        """Each assigned partition of ``topics`` (None: of every topic) read to its end,
        and nothing of them buffered or waiting. (Ends first: during a load they are what
        says no, at the cost of a few lookups.)"""
        if self.source is None:
            return False
        strict = self.initial_load  # an unknown end or position is not an end
        for tp in self._assigned():
            if topics is not None and tp[0] not in topics:
                continue
            if not self.source.read_to_end(tp, self.tracker.consumed_to(tp), strict):
                return False
        flow = self.flow
        if topics is None:
            return not (self.batcher.open_batches or flow.queues or flow.cut)
        return not (
            self.batcher.holds_any(topics)
            or any(lane[0] in topics for lane in flow.queues)
            or any(b.lanes[0][0] in topics for b in flow.cut)
        )

    def _whole_topics(self, entity: str, topics: set[str]) -> bool:
        assert self.source is not None
        counts = self.source.partition_counts
        total = sum(counts.get(t, 0) for t in topics) if topics <= counts.keys() else None
        held = sum(1 for tp in self._assigned() if tp[0] in topics)
        if total is not None and held >= total:
            return True
        if entity not in self._told_partial:
            self._told_partial.add(entity)
            log.error(
                "initial load of %s caught up, but this member holds %d of %s partitions of "
                "its topics: another member of the group reads the rest, so no member can "
                "know when the load ends; it is not closed (isLastBatch stays false). Run a "
                "single replica for an initial load; it closes the load when it catches up "
                "holding them all",
                entity,
                held,
                total if total is not None else "an unknown number of",
            )
        return False
