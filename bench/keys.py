"""Keyed CRM records for the benchmark: how real topics repeat their message keys.

A CRM topic keyed by account repeats keys (hundreds of accounts, a few hot ones), and a
sink that keeps order per key can only run as many calls at once as keys allow. So the
benchmark's records carry a message key drawn from one of these distributions:

  uniform200   200 keys, each equally likely
  hot20        200 keys, one of them taking 20 % of the records, the rest uniform
  distinct     every record its own key (the old benchmark's data: it flatters any design)

Each record is about 1.5 KB of JSON with what Clari requires (a distinct ``id``,
``createdAt`` and ``updatedAt`` in epoch ms), its message key as ``key`` and the key's
own sequence number as ``seq`` (0, 1, 2... per key in production order), so that the
emulator can tell a record delivered out of order for its key. Records are produced with
Kafka's default partitioner (murmur2, as the Java clients use), so a key always lands
in the same partition.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Iterator

import orjson
from confluent_kafka import Producer

from devkit.sample_data import crm_record

DISTRIBUTIONS = ("uniform200", "hot20", "distinct")
KEYS = 200
HOT_SHARE = 0.2
RECORD_BYTES = 1_500
PAD = "Notes from the quarterly business review: renewal risk discussed, champion engaged. "
SEED = 12


def record_id(i: int) -> str:
    """The ``id`` of record ``i`` (crm_record's): distinct for every record of a topic."""
    return f"ACC{i:012d}"


def keys(distribution: str, n: int, seed: int = SEED) -> Iterator[str]:
    """The message keys of records 0..n-1, the same for the same arguments."""
    rng = random.Random(seed)
    if distribution == "uniform200":
        for _ in range(n):
            yield f"account-{rng.randrange(KEYS):03d}"
    elif distribution == "hot20":
        # account-000 is the hot one; the others share the remaining 80 % evenly.
        for _ in range(n):
            hot = rng.random() < HOT_SHARE
            yield "account-000" if hot else f"account-{1 + rng.randrange(KEYS - 1):03d}"
    elif distribution == "distinct":
        for i in range(n):
            yield record_id(i)
    else:
        raise ValueError(f"unknown key distribution {distribution!r}; known: {DISTRIBUTIONS}")


def record(i: int, key: str, seq: int, size: int = RECORD_BYTES) -> bytes:
    """Record ``i`` as JSON of about ``size`` bytes, carrying its key and per-key ``seq``."""
    rec = crm_record("account", i) | {
        "key": key,
        "seq": seq,
        "producedAt": int(time.time() * 1000),
    }
    body = orjson.dumps(rec)
    pad = max(0, size - len(body) - 12)
    rec["notes"] = (PAD * (pad // len(PAD) + 1))[:pad]
    return orjson.dumps(rec)


def keyed_records(
    distribution: str, n: int, size: int = RECORD_BYTES
) -> Iterator[tuple[str, bytes]]:
    """(message key, value) of records 0..n-1 in production order."""
    seqs: dict[str, int] = {}
    for i, key in enumerate(keys(distribution, n)):
        seq = seqs.get(key, 0)
        seqs[key] = seq + 1
        yield key, record(i, key, seq, size)


def producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            # The Java clients' default partitioner: what a CRM connector or service
            # producing the topic would use (librdkafka's default hashes with CRC32).
            "partitioner": "murmur2_random",
            "enable.idempotence": True,  # per-key order in the topic, even through retries
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.kbytes": 512_000,
        }
    )


def load(bootstrap: str, topic: str, distribution: str, n: int, size: int = RECORD_BYTES) -> None:
    """Produce ``n`` records of ``distribution`` to ``topic`` (created beforehand)."""
    out = producer(bootstrap)
    for k, (key, value) in enumerate(keyed_records(distribution, n, size)):
        while True:
            try:
                out.produce(topic, key=key.encode(), value=value)
                break
            except BufferError:
                out.poll(0.05)
        if k % 1000 == 999:
            out.poll(0)
    left = out.flush(120)
    if left:
        raise RuntimeError(f"{left} records of {topic} were not produced")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), as a signed int."""
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@functools.cache
def _partitions_of_keys(distribution: str, n: int, partitions: int) -> tuple[int, ...]:
    counts: dict[str, int] = {}
    for key in keys(distribution, n):
        counts[key] = counts.get(key, 0) + 1
    out = [0] * partitions
    for key, count in counts.items():
        out[partition_of(key, partitions)] += count
    return tuple(out)


def partition_counts(distribution: str, n: int, partitions: int) -> list[int]:
    """Records per partition once ``n`` records of ``distribution`` are produced."""
    return list(_partitions_of_keys(distribution, n, partitions))
