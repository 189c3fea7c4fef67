"""What record mapping (sink/mapping.py) costs per record, on the intake's own steps.

    .venv/bin/python -m bench.mapping_cost [--records 20000] [--rounds 7]

For each case, the work the intake does for a poll of messages (sink/intake.py), as CPU
microseconds per record (process time, best of the rounds: the machine may be shared):
the hot path (JSON sent as the producer's bytes, probed by simdjson), attributes
excluded (decoded and encoded again), and the mapping cases: a Salesforce account
(rename, two ISO-8601 conversions, one exclusion) and a Debezium Postgres event
(unwrap, rename, micros and ISO-8601), with and without the JSON converter's schema
wrapper.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Message

from sink.config import Settings
from sink.decoding import Shaper
from sink.records import SinkRecord
from tests.crm_fixtures import (
    DEBEZIUM_SETTINGS,
    SALESFORCE_SETTINGS,
    debezium_event,
    pg_row,
    salesforce_account,
)

BASE = {"CLARI_ENTITY_TYPE": "Account", "CLARI_API_TOKEN": "t", "CLARI_PARTNER_KEY": "p"}


def plain(i: int) -> dict[str, Any]:
    """The Salesforce account as Clari wants it already (what the hot path sends)."""
    src = salesforce_account(i)
    out = {k: v for k, v in src.items() if k not in ("Id", "CreatedDate", "LastModifiedDate")}
    return {"id": src["Id"], "createdAt": 1_709_294_400_000 + i,
            "updatedAt": 1_709_294_400_000 + i, **out}  # fmt: skip


CASES: dict[str, tuple[dict[str, str], Callable[[int], dict[str, Any]]]] = {
    "hot path: JSON as produced (no mapping)": ({}, plain),
    "exclude 1 attribute (decode + encode)": ({"CLARI_EXCLUDE_ATTRIBUTES": "attributes"}, plain),
    "Salesforce: rename 3, 2 x iso8601, exclude 1": (SALESFORCE_SETTINGS, salesforce_account),
    "Debezium JSON, schema wrapper: unwrap, rename 2, micros + iso8601": (
        DEBEZIUM_SETTINGS,
        lambda i: debezium_event("u", pg_row(i, "Old"), pg_row(i, f"Account {i}")),
    ),
    "Debezium JSON, schema wrapper, full decode (no slim read)": (
        DEBEZIUM_SETTINGS,
        lambda i: debezium_event("u", pg_row(i, "Old"), pg_row(i, f"Account {i}")),
    ),
    "Debezium JSON, bare payload: same": (
        DEBEZIUM_SETTINGS,
        lambda i: debezium_event("u", pg_row(i, "Old"), pg_row(i, f"Account {i}"), False),
    ),
}


def messages(make: Callable[[int], dict[str, Any]], n: int) -> list[Message]:
    return [
        Message(topic="crm", partition=0, offset=i, key=b"k%d" % i, value=orjson.dumps(make(i)))
        for i in range(n)
    ]


def intake_step(shaper: Shaper, msgs: list[Message]) -> int:
    """What sink/intake.py does with a poll before batching; the records that pass."""
    probed = shaper.probe_messages(msgs, "id")
    if probed is not None:
        return len(probed[0])
    shaped, _, rejected = shaper.shape_many(list(map(SinkRecord.from_message, msgs)))
    assert not rejected, rejected[0][1]
    return len(shaped)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"{'case':<68} {'bytes':>6} {'us/record':>10}")
    for name, (values, make) in CASES.items():
        shaper = Shaper.for_settings(Settings(**BASE, **values), None, contract=True)
        if "full decode" in name:  # what the slim read of change events saves
            shaper._slim_event = lambda value: None  # type: ignore[method-assign]
        msgs = messages(make, args.records)
        size = sum(len(m.value() or b"") for m in msgs) // len(msgs)
        best = float("inf")
        for _ in range(args.rounds):
            t0 = time.process_time()
            for start in range(0, len(msgs), 500):
                assert intake_step(shaper, msgs[start : start + 500]) > 0
            best = min(best, time.process_time() - t0)
        print(f"{name:<68} {size:>6} {best / len(msgs) * 1e6:>10.2f}")


if __name__ == "__main__":
    main()
