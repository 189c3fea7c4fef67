"""What a real Schema Registry does that a hand-written one glosses over, and what the
sink makes of it. Against Karapace (tests/real_registry.py), basic auth on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sink.avro import SchemaRegistry
from tests.real_registry import PASSWORD, USER, RealRegistry, RegistryError
from tests.registry import avro_value
from tests.support import unique

pytestmark = pytest.mark.integration


def contact(*extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "record",
        "name": "Contact",
        "namespace": f"crm.{unique('ns').replace('-', '_')}",  # no id shared with other tests
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "createdAt", "type": "long"},
            {"name": "updatedAt", "type": "long"},
            *extra,
        ],
    }


def test_the_same_schema_text_gets_the_same_id_under_any_subject(
    schema_registry: RealRegistry,
) -> None:
    schema = contact()
    first, second = unique("contacts") + "-value", "crm.Contact-" + unique("s")
    sid = schema_registry.register(first, schema)
    assert schema_registry.register(second, schema) == sid
    assert schema_registry.register(first, schema) == sid  # registering again: no new version
    assert schema_registry.request("GET", f"/subjects/{first}/versions") == [1]
    # One id, one schema for the reader, whichever subject its producer used.
    reader = SchemaRegistry(schema_registry.url, USER, PASSWORD)
    value = avro_value(schema, sid, {"id": "C1", "createdAt": 1, "updatedAt": 2})
    asyncio.run(reader.fetch(reader.missing([value])))
    assert reader.decode(value) == {"id": "C1", "createdAt": 1, "updatedAt": 2}


def test_backward_compatibility_by_default_an_incompatible_change_is_refused_with_409(
    schema_registry: RealRegistry,
) -> None:
    assert schema_registry.request("GET", "/config") == {"compatibilityLevel": "BACKWARD"}
    v1 = contact()
    subject = unique("contacts") + "-value"
    sid1 = schema_registry.register(subject, v1)
    # A new field without a default: v2 cannot read what v1 wrote.
    required = {**v1, "fields": [*v1["fields"], {"name": "email", "type": "string"}]}
    with pytest.raises(RegistryError) as refused:
        schema_registry.register(subject, required)
    assert refused.value.status == 409, refused.value.body
    # With a default it can: a new version, a new id.
    optional = {
        **v1,
        "fields": [*v1["fields"], {"name": "email", "type": ["null", "string"], "default": None}],
    }
    sid2 = schema_registry.register(subject, optional)
    assert sid2 != sid1
    assert schema_registry.request("GET", f"/subjects/{subject}/versions") == [1, 2]


def test_basic_auth_is_required_and_the_sink_says_so_without_the_password(
    schema_registry: RealRegistry,
) -> None:
    with pytest.raises(RegistryError) as refused:
        schema_registry.request("GET", "/subjects", auth=False)
    assert refused.value.status == 401
    reader = SchemaRegistry(schema_registry.url, USER, "wrong-" + PASSWORD)
    failures: list[str] = []

    async def give_up(_: float) -> bool:
        return True

    assert not asyncio.run(reader.fetch_until_done({1}, give_up, failures.append))
    assert len(failures) == 1 and "HTTP 401" in failures[0], failures
    assert PASSWORD not in failures[0]
