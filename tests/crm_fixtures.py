"""Records as CRM systems publish them: a Salesforce-shaped account stream (its REST
API's field names and timestamp text), a Debezium Postgres change stream (the JSON
converter, with and without its schema wrapper), and the settings that map them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

SALESFORCE_SETTINGS = {
    "CLARI_RENAME_ATTRIBUTES": "Id:id,CreatedDate:createdAt,LastModifiedDate:updatedAt",
    "CLARI_TIMESTAMP_ATTRIBUTES": "createdAt:iso8601,updatedAt:iso8601",
    "CLARI_EXCLUDE_ATTRIBUTES": "attributes",
}
DEBEZIUM_SETTINGS = {
    "KAFKA_VALUE_ENVELOPE": "debezium",
    "CLARI_RENAME_ATTRIBUTES": "created_at:createdAt,updated_at:updatedAt",
    # Debezium's Postgres types: timestamp is MicroTimestamp, timestamptz ZonedTimestamp.
    "CLARI_TIMESTAMP_ATTRIBUTES": "createdAt:micros,updatedAt:iso8601",
}
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
T0_MS = 1_709_294_400_000


def sf_time(at: datetime) -> str:
    """Salesforce's REST form: milliseconds and an offset without a colon."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}+0000"


def salesforce_account(i: int) -> dict[str, Any]:
    created = T0 + timedelta(minutes=i)
    return {
        "attributes": {
            "type": "Account",
            "url": f"/services/data/v59.0/sobjects/Account/001Hs00003ABC{i:05d}",
        },
        "Id": f"001Hs00003ABC{i:05d}",
        "Name": f"Account {i}",
        "Industry": "Manufacturing",
        "AnnualRevenue": 1_000_000.0 + i,
        "OwnerId": "005Hs000001XYZ",
        "CreatedDate": sf_time(created),
        "LastModifiedDate": sf_time(created + timedelta(seconds=30, milliseconds=250)),
        "IsDeleted": False,
    }


def salesforce_expected(i: int) -> dict[str, Any]:
    """What Clari receives for salesforce_account(i) under SALESFORCE_SETTINGS."""
    src = salesforce_account(i)
    return {
        "id": src["Id"],
        "Name": src["Name"],
        "Industry": "Manufacturing",
        "AnnualRevenue": src["AnnualRevenue"],
        "OwnerId": src["OwnerId"],
        "createdAt": T0_MS + i * 60_000,
        "updatedAt": T0_MS + i * 60_000 + 30_250,
        "IsDeleted": False,
    }


def _column(kind: str, optional: bool, name: str, logical: str | None = None) -> dict[str, Any]:
    column: dict[str, Any] = {"type": kind, "optional": optional, "field": name}
    if logical:
        column |= {"name": logical, "version": 1}
    return column


# The JSON converter's schema (schemas.enable=true) of a 5-column Postgres table, as
# Debezium 2.5 writes it: several times the size of the row it describes.
_ROW_SCHEMA = [
    _column("int32", False, "id"),
    _column("string", True, "name"),
    _column("string", True, "tier"),
    _column("int64", True, "created_at", "io.debezium.time.MicroTimestamp"),
    _column("string", True, "updated_at", "io.debezium.time.ZonedTimestamp"),
]
_SOURCE_SCHEMA = [
    _column("string", False, name)
    for name in ("version", "connector", "name", "db", "schema", "table", "snapshot")
] + [_column("int64", name != "ts_ms", name) for name in ("ts_ms", "txId", "lsn", "xmin")]
DEBEZIUM_SCHEMA = {
    "type": "struct",
    "fields": [
        {"type": "struct", "fields": _ROW_SCHEMA, "optional": True,
         "name": "crm.public.accounts.Value", "field": "before"},
        {"type": "struct", "fields": _ROW_SCHEMA, "optional": True,
         "name": "crm.public.accounts.Value", "field": "after"},
        {"type": "struct", "fields": _SOURCE_SCHEMA, "optional": False,
         "name": "io.debezium.connector.postgresql.Source", "field": "source"},
        _column("string", False, "op"),
        _column("int64", True, "ts_ms"),
    ],
    "optional": False,
    "name": "crm.public.accounts.Envelope",
    "version": 1,
}  # fmt: skip


def pg_row(i: int, name: str, updated_s: int = 0) -> dict[str, Any]:
    created_us = (T0_MS + i * 1000) * 1000 + 123  # microseconds, as Debezium sends them
    updated = T0 + timedelta(seconds=i + updated_s)
    return {
        "id": 1000 + i,
        "name": name,
        "tier": "gold" if i % 2 else "silver",
        "created_at": created_us,
        "updated_at": updated.isoformat().replace("+00:00", "Z"),
    }


def debezium_event(
    op: str, before: dict[str, Any] | None, after: dict[str, Any] | None, wrapped: bool = True
) -> dict[str, Any]:
    payload = {
        "before": before,
        "after": after,
        "source": {
            "version": "2.5.0.Final",
            "connector": "postgresql",
            "name": "crm",
            "ts_ms": T0_MS,
            "snapshot": "false",
            "db": "crm",
            "schema": "public",
            "table": "accounts",
            "txId": 5551,
            "lsn": 24023128,
        },
        "op": op,
        "ts_ms": T0_MS + 5,
    }
    return {"schema": DEBEZIUM_SCHEMA, "payload": payload} if wrapped else payload
