"""Seed a topic with sample CRM records: ``python -m devkit.seed --bootstrap H:P --topic T``."""

from __future__ import annotations

import argparse
import sys

import orjson
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from devkit.sample_data import crm_record


def seed(bootstrap: str, topic: str, n: int, entity: str = "account", partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        try:
            fut.result(30)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(n):
        record = crm_record(entity, i)
        while True:
            try:
                producer.produce(topic, key=record["id"].encode(), value=orjson.dumps(record))
                break
            except BufferError:
                producer.poll(0.1)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.seed")
    parser.add_argument("--bootstrap", default="localhost:9092")
    parser.add_argument("--topic", default="crm.accounts")
    parser.add_argument("--records", type=int, default=5_000)
    parser.add_argument(
        "--entity", default="account", choices=["account", "contact", "opportunity", "activity"]
    )
    args = parser.parse_args(argv)
    seed(args.bootstrap, args.topic, args.records, args.entity)
    print(f"seeded {args.records} {args.entity} records into {args.topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
