"""Logging: JSON lines by default (one object per line, for log pipelines), or text."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


# librdkafka's log facilities that tell of a broker going or gone, connection by
# connection: ``FAIL`` (a connection failed or closed), ``REQTMOUT`` (requests timed out
# on it), ``METADATAUPDATE`` (a partition's leader not known, as when its broker stops).
CONNECTION_DETAIL = frozenset({"FAIL", "REQTMOUT", "METADATAUPDATE"})


class ConnectionFailuresAtDebug(logging.Filter):
    """librdkafka's lines about connections to brokers (CONNECTION_DETAIL) at DEBUG.

    While a broker is away librdkafka logs a ``FAIL`` at ERROR for every connection
    attempt of every client, about 20 a second: 1,100 lines in a 50 s outage. The same
    failures reach the consumer's error callback, which logs the outage once
    (sink/outage.py); the lines stay at DEBUG for whoever needs the detail.
    confluent-kafka logs ``logger.log(level, "%s [%s] %s", facility, client, text)``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args and args[0] in CONNECTION_DETAIL:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    librdkafka = logging.getLogger("librdkafka")
    if not any(isinstance(f, ConnectionFailuresAtDebug) for f in librdkafka.filters):
        librdkafka.addFilter(ConnectionFailuresAtDebug())
