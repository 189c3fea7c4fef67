"""An asyncio face for confluent-kafka's Producer.

A background thread serves delivery callbacks (``poll``) and hands each result to the
event loop, so ``await produce(...)`` returns only once the broker has acknowledged the
message. The response and dead-letter topics are written through it: a batch's offsets
are committed only after those writes are acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from sink.records import Headers

log = logging.getLogger(__name__)


class ProduceError(Exception):
    def __init__(self, topic: str, error: KafkaError | str) -> None:
        self.topic = topic
        self.error = error
        super().__init__(f"writing to topic '{topic}' failed: {error}")


class AsyncProducer:
    def __init__(self, conf: dict[str, Any]) -> None:
        base: dict[str, Any] = {
            "enable.idempotence": True,  # no duplicates from the producer's own retries
            "acks": "all",
            "linger.ms": 1,  # a batch waits for its response to be acknowledged
            "compression.type": "lz4",
            # Fail a write within a minute so the caller sees it, says so, and retries it.
            "message.timeout.ms": 60_000,
        }
        self._producer = Producer({**base, **conf})
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="producer-poll", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    async def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Write one message and wait for the broker's acknowledgement."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            loop.call_soon_threadsafe(_settle, done, topic, err)

        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=on_delivery
                )
                break
            except BufferError:  # local queue full: let deliveries drain
                await asyncio.sleep(0.05)
            except KafkaException as exc:
                raise ProduceError(topic, exc.args[0]) from None
        await done

    def flush(self, timeout_s: float) -> int:
        remaining: int = self._producer.flush(timeout_s)
        return remaining

    def close(self, timeout_s: float = 10.0) -> None:
        left = self.flush(timeout_s)
        if left:
            log.error("producer closed with %d messages not acknowledged", left)
        self._closed.set()
        self._thread.join(timeout=2)


def _settle(done: asyncio.Future[None], topic: str, err: KafkaError | None) -> None:
    if done.done():
        return
    if err is None:
        done.set_result(None)
    else:
        done.set_exception(ProduceError(topic, err))
