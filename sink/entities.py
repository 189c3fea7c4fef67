"""Which Clari entity a batch goes to: one per topic (CLARI_TOPIC_ENTITIES), else
CLARI_ENTITY_TYPE.

A batch holds the records of one lane of one partition (sink/batching.py), so of one
topic: its entity is its topic's. This is the one place that knows it, for the request
(endpoint and ``sourceEntity``), the response messages and the per-entity metrics; the
initial-load rule (``isLastBatch`` auto, per entity and load) can ask it too.
"""

from __future__ import annotations

from dataclasses import dataclass

from sink.config import Settings
from sink.records import Batch


@dataclass(frozen=True, slots=True)
class Route:
    entity: str  # the entity type as configured ("Account"); "" with manual URLs only
    path: str  # as Clari's path spells it ("account")
    source_entity: str  # the data set's sourceEntity

    @property
    def label(self) -> str:
        """The entity as a metric label and a response message's field."""
        return self.path or "none"


def batch_topic(batch: Batch) -> str | None:
    """The topic a batch's records come from (None for a batch of no records)."""
    offsets = batch.parked if batch.parked is not None else batch.covered()
    for topic, _partition in offsets:
        return topic
    return None


class EntityRoutes:
    def __init__(self, settings: Settings) -> None:
        self.default = Route(
            settings.clari_entity_type or "", settings.entity_path, settings.source_entity
        )
        self._by_topic: dict[str, Route] = {}
        for topic, (entity, source) in settings.topic_entities.items():
            path = entity.lower()
            # CLARI_SOURCE_ENTITY is allowed with one entity type only (sink/config.py).
            source = source or settings.clari_source_entity or f"crm_{path}"
            self._by_topic[topic] = Route(entity, path, source)

    @property
    def per_topic(self) -> bool:
        return bool(self._by_topic)

    def for_topic(self, topic: str | None) -> Route:
        if topic is None:
            return self.default
        return self._by_topic.get(topic, self.default)

    def for_batch(self, batch: Batch) -> Route:
        if not self._by_topic:
            return self.default  # one entity: no need to look at the batch
        return self.for_topic(batch_topic(batch))


__all__ = ["EntityRoutes", "Route", "batch_topic"]
