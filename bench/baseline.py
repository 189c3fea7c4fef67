"""The ceiling for Python here: a bare confluent-kafka consumer that consumes, decodes the
JSON and commits, nothing else. Prints one JSON line: records, seconds, first/last times.

    python -m bench.baseline --bootstrap H:P --topic T --records N
"""

from __future__ import annotations

import argparse
import sys
import time

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException

from sink.kafka_config import FETCH_TUNING


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--records", type=int, required=True)
    args = parser.parse_args(argv)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"baseline-{time.time()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **FETCH_TUNING,  # the sink's fetch settings: a like-for-like ceiling
        }
    )
    consumer.subscribe([args.topic])
    seen = 0
    first = 0.0
    next_commit = 0.0
    while seen < args.records:
        msgs = consumer.consume(1000, 1.0)
        for msg in msgs:
            if msg.error() is None:
                orjson.loads(msg.value() or b"null")
                seen += 1
        if msgs:
            if not first:
                first = time.time()
            now = time.monotonic()
            if now >= next_commit:  # the sink commits on an interval too
                consumer.commit(asynchronous=True)
                next_commit = now + 1.0
    try:
        consumer.commit(asynchronous=False)
    except KafkaException as exc:  # the last asynchronous commit may have covered it all
        if exc.args[0].code() != KafkaError._NO_OFFSET:
            raise
    last = time.time()
    consumer.close()
    print(orjson.dumps({"records": seen, "first": first, "last": last}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
