"""Which records a 400 blames (issue 13): the ids an error body names, read from its
structure; and, when it names none, the batch split in halves until the culprits stand
alone, so that only they are dead-lettered."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from sink.delivery import rejected_ids
from sink.records import SinkRecord
from tests.hostile import batch, record, serve, sink
from tests.support import PARTNER, TOKEN, Emulator


def with_ids(ids: list[Any]) -> list[SinkRecord]:
    out = []
    for i, rid in enumerate(ids):
        r = record(i)
        r.rid = rid
        out.append(r)
    return out


# -- rejected_ids ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "ids", "named"),
    [
        # Clari's own words name string ids in free text.
        (
            [{"errorCode": "X", "errorSummary": "Missing field createdAt for record with id A7"}],
            ["A1", "A7", "A70"],
            {"A7"},
        ),
        (
            [{"errorSummary": "Duplicate record with value 42 for primary key field id"}],
            [4, 42, 420],
            {"42"},
        ),
        # Positions, counts and limits are numbers too: they name no record.
        ({"detail": [{"loc": ["body", 0, "records", 7, "createdAt"]}]}, list(range(100)), set()),
        ([{"errorSummary": "The number of records limit to 100"}], list(range(101)), set()),
        ([{"errorSummary": "Data set 7: missing records"}], ["7", "8"], set()),
        # Ids under id keys, as numbers or text, alone or in lists.
        ({"failed": [{"recordId": 7}, {"recordId": "8"}]}, [7, 8, 9], {"7", "8"}),
        ({"ids": ["A1", "A3"], "count": 2}, ["A1", "A2", "A3"], {"A1", "A3"}),
        ({"id": 7.0, "ok": True, "n": None}, [7], set()),
        # Whole strings, quoted ids; an id inside a longer word is not that id.
        ({"rejected": "ACC-1"}, ["ACC-1", "ACC-10"], {"ACC-1"}),
        ([{"errorSummary": "bad value in 'a.b.c'"}], ["a.b", "a.b.c"], {"a.b.c"}),
        ("record 'B-2' is invalid", ["B-2", "B-20"], {"B-2"}),
        (None, ["A1"], set()),
        # Integer ids reach this as text (record_id): a number alone is still no id.
        ({"row": "7"}, ["7", "8"], set()),
        ([{"errorSummary": "offset -7 is out of range"}], ["-7"], set()),
        ("record '7' is invalid", ["7", "8"], {"7"}),
    ],
)
def test_rejected_ids_reads_the_structure_of_the_body(
    body: Any, ids: list[Any], named: set[str]
) -> None:
    assert rejected_ids(body, batch(with_ids(ids)), "id") == named


def test_rejected_ids_is_linear_in_body_and_batch() -> None:
    records = with_ids([f"001Z{i:014d}" for i in range(20_000)])
    bad = [records[i].rid for i in range(0, 20_000, 2_000)]
    errors = [
        {"errorCode": "INVALID_INPUT_FORMAT", "errorSummary": f"Field {i} is wrong here"}
        for i in range(30_000)
    ] + [{"errorSummary": f"Missing required field updatedAt for record with id {b}"} for b in bad]
    body = orjson.loads(orjson.dumps(errors))  # ~1.5 MB of answer
    started = time.process_time()
    named = rejected_ids(body, batch(records), "id")
    assert named == set(bad)
    assert time.process_time() - started < 2.0  # the text search took minutes


# -- a 400 that names no record -----------------------------------------------------------
@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = Emulator().start()
    try:
        yield emu
    finally:
        emu.stop()


def keyed(i: int, **fields: Any) -> SinkRecord:
    r = record(i, **fields)
    r.key = f"K{i % 7}".encode()  # keys repeat across the halves
    return r


async def test_a_400_naming_no_record_is_split_until_only_the_culprits_are_dead_lettered(
    emulator: Emulator,
) -> None:
    # Clari answers "Missing required field id", naming nobody, for a record without id.
    culprits = {13, 71}
    records = [keyed(i, id=None if i in culprits else f"ACC{i:05d}") for i in range(100)]
    calls_when_sent: list[int] = []
    async with sink(emulator.url, CLARI_API_TOKEN=TOKEN, CLARI_PARTNER_KEY=PARTNER) as s:
        await asyncio.wait_for(
            s.delivery.deliver(
                batch(records),
                on_sent=lambda: calls_when_sent.append(len(emulator.api_requests())),
            ),
            60,
        )

    dead = s.dead()
    assert sorted(int(d.headers["clari-sink.source.offset"]) for d in dead) == sorted(culprits)
    assert {d.headers["clari-sink.error.reason"] for d in dead} == {b"rejected-by-api"}
    assert b"Missing required field id" in dead[0].headers["clari-sink.error.body"]
    # Every good record arrived once, in the batch's order (so in each key's order).
    good = [orjson.loads(r.value) for r in records if r.offset not in culprits]
    assert [a["record"] for a in emulator.records()] == good
    calls = len(emulator.api_requests())
    assert calls <= 1 + 2 * len(culprits) * math.ceil(math.log2(100))
    assert len(s.responses()) == calls  # every call published
    assert calls_when_sent == [calls]  # on_sent once, when no call was left to make
    outcomes = [r["outcome"] for r in s.responses()]
    assert outcomes[0] == "split" and outcomes.count("dead-lettered") == len(culprits)
    # isLastBatch: true on the whole batch and on the call that ends it, not on a first half.
    last_flags = [r["query"].get("isLastBatch") for r in emulator.api_requests()]
    assert (last_flags[0], last_flags[1], last_flags[-1]) == ("true", "false", "true")


async def test_a_400_whose_numbers_are_positions_blames_only_the_culprit() -> None:
    # A FastAPI-style answer names the culprit's position, not its id; ids are numbers too.
    async def api(request: web.Request) -> web.Response:
        sent = orjson.loads(await request.read())[0]["records"]
        where = [i for i, r in enumerate(sent) if "createdAt" not in r]
        if where:
            detail = [{"loc": ["body", 0, "records", i, "createdAt"]} for i in where]
            return web.json_response({"detail": detail}, status=400)
        return web.Response(status=200)

    # Ids 50..99 then 0..49: the culprit, id 57, sits at position 7.
    ids = [*range(50, 100), *range(50)]
    records = [record(i, id=rid, createdAt=None if rid == 57 else 1) for i, rid in enumerate(ids)]
    for r, rid in zip(records, ids, strict=True):
        r.rid = rid
    async with serve(api) as url, sink(url) as s:
        await asyncio.wait_for(s.delivery.deliver(batch(records)), 30)

    assert [orjson.loads(d.value)["id"] for d in s.dead()] == [57]


async def test_a_400_that_refuses_the_whole_call_is_not_split() -> None:
    calls: list[int] = []

    async def api(request: web.Request) -> web.Response:
        await request.read()
        calls.append(1)
        errors = [{"errorCode": "INVALID_CONFIGURATION", "errorSummary": "not enabled"}]
        return web.json_response(errors, status=400)

    records = [record(i) for i in range(50)]
    async with serve(api) as url, sink(url) as s:
        await asyncio.wait_for(s.delivery.deliver(batch(records)), 30)

    assert len(calls) == 1 and len(s.dead()) == 50


async def test_a_record_holding_a_key_twice_is_blamed_not_the_record_clari_names(
    emulator: Emulator,
) -> None:
    """Record 4 says id twice: the sink read ACC00004, Clari reads the last, ACC00002,
    and answers 400 naming ACC00002 as a duplicate. Record 2 is innocent: record 4 is
    dead-lettered (duplicate-key) and the rest, record 2 among them, is delivered."""
    records = [record(i) for i in range(10)]
    doubled = records[4].body[:-1] + b',"id":"ACC00002"}'
    records[4].body = records[4].value = doubled
    async with sink(emulator.url, CLARI_API_TOKEN=TOKEN, CLARI_PARTNER_KEY=PARTNER) as s:
        await asyncio.wait_for(s.delivery.deliver(batch(records)), 60)
    (dead,) = s.dead()
    assert dead.headers["clari-sink.source.offset"] == b"4"
    assert dead.headers["clari-sink.error.reason"] == b"duplicate-key"
    arrived = sorted(a["record"]["id"] for a in emulator.records())
    assert arrived == sorted(f"ACC{i:05d}" for i in range(10) if i != 4)
