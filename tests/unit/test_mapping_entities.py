"""Several entities in one deployment (CLARI_TOPIC_ENTITIES): each topic's batch goes to
its entity's endpoint with its own sourceEntity, through the emulator, and is counted
per entity in the response messages and the metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from sink.endpoint import EndpointBuilder
from sink.entities import batch_topic
from tests.hostile import PARTNER, TOKEN, batch, record, settings, sink
from tests.support import Emulator

TOPICS = {
    "crm.accounts": "Account",
    "crm.contacts": "Contact",
    "crm.opportunities": "Opportunity",
    "crm.activities": "Activity",
}
ROUTES = ",".join(f"{t}:{e}" for t, e in TOPICS.items()).replace(
    "crm.contacts:Contact", "crm.contacts:Contact:sf_contact"
)


@pytest.fixture
def clari() -> Iterator[Emulator]:
    emulator = Emulator()
    emulator.state.api_token, emulator.state.partner_key = TOKEN, PARTNER
    emulator.start()
    yield emulator
    emulator.stop()


def metric(s: Any, name: str, **labels: str) -> float:
    return float(s.metrics.registry.get_sample_value(f"clari_sink_{name}_total", labels) or 0)


async def test_each_topic_goes_to_its_entity_with_its_source_entity(clari: Emulator) -> None:
    overrides = {"CLARI_ENTITY_TYPE": "", "CLARI_TOPIC_ENTITIES": ROUTES}
    async with sink(clari.url, **overrides) as s:
        for n, topic in enumerate(TOPICS, 1):
            records = [record(i, topic=topic) for i in range(n * 3)]
            await asyncio.wait_for(s.delivery.deliver(batch(records, name=topic)), 20)
        await s.reporter.dead_letter([record(99, topic="crm.contacts")], reason="missing-id")

    stats = clari.state
    assert stats.by_entity == {"account": 3, "contact": 6, "opportunity": 9, "activity": 12}
    assert stats.by_source_entity == {
        "crm_account": 3,
        "sf_contact": 6,
        "crm_opportunity": 9,
        "crm_activity": 12,
    }
    paths = [r["path"] for r in clari.api_requests()]
    assert paths == [f"/v2/ingest/entity/{e.lower()}" for e in TOPICS.values()]
    shown = [(r["batchId"], r["entity"], r["sourceEntity"]) for r in s.responses()]
    assert shown == [
        ("crm.accounts", "account", "crm_account"),
        ("crm.contacts", "contact", "sf_contact"),
        ("crm.opportunities", "opportunity", "crm_opportunity"),
        ("crm.activities", "activity", "crm_activity"),
    ]
    for entity, count in (("account", 3), ("contact", 6), ("opportunity", 9), ("activity", 12)):
        assert metric(s, "entity_records", entity=entity, outcome="delivered") == count
        assert metric(s, "entity_api_requests", entity=entity, status="200") == 1
    assert metric(s, "entity_records", entity="contact", outcome="dead-lettered") == 1
    assert metric(s, "entity_records", entity="account", outcome="dead-lettered") == 0


def test_topics_not_mapped_use_clari_entity_type_and_manual_urls_get_theirs() -> None:
    s = settings("http://127.0.0.1:1", CLARI_TOPIC_ENTITIES="crm.contacts:Contact")
    builder = EndpointBuilder(s)
    other = batch([record(1, topic="crm.other")])
    assert batch_topic(other) == "crm.other"
    assert "/ingest/entity/account?" in builder.build(other, True).url
    contacts = builder.build(batch([record(1, topic="crm.contacts")]), True)
    assert "/ingest/entity/contact?" in contacts.url
    assert contacts.body.startswith(b'[{"sourceEntity":"crm_contact","records":[')
    manual = settings(
        "http://127.0.0.1:1",
        CLARI_TEMPLATE="manual",
        CLARI_URL="http://127.0.0.1:1/v1/ingest/entity/{entity}?mode=incremental",
        CLARI_TOPIC_ENTITIES="crm.contacts:Contact",
    )
    url = EndpointBuilder(manual).build(batch([record(1, topic="crm.contacts")]), True).url
    assert url == "http://127.0.0.1:1/v1/ingest/entity/contact?mode=incremental"
