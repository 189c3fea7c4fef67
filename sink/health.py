"""What is wrong right now, by component, for the health endpoints and the logs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sink.outage import Outage, Wording

if TYPE_CHECKING:
    from sink.config import Settings


log = logging.getLogger("sink.outage")

# The components whose failures come in floods (every call, every connection): their
# problems are logged as outages (sink/outage.py), once, not once per failure.
OUTAGES = {
    "kafka": Wording("Kafka broker", "unreachable", "reachable again"),
    "api": Wording("Clari API", "failing", "answering again"),
    "auth": Wording("Clari API credential", "rejected", "accepted again"),
    "schema-registry": Wording("schema registry", "unavailable", "available again"),
}


@dataclass(slots=True)
class Problem:
    message: str
    since: float


class Health:
    """Components: ``kafka`` (broker reachable), ``api`` (Clari answering), ``auth``
    (credential accepted), ``output-topics`` (response and dead-letter writes),
    ``schema-registry`` (writer schemas readable, Avro values only).

    Every message is masked as it is stored: callers pass what they have (an API's
    answer may echo the credential it rejected) and ``/readyz`` and ``/admin/state``,
    which serve these messages to anyone who can reach the admin port, never show a
    secret."""

    def __init__(self, mask: Callable[[str], str], places: dict[str, str] | None = None) -> None:
        """``places``: where each component of OUTAGES is (shown in the log lines)."""
        self._mask = mask
        self._problems: dict[str, Problem] = {}
        self.started = time.time()
        self.loop_heartbeat = time.monotonic()
        self.outages = {
            name: Outage(wording, mask((places or {}).get(name, "")), log)
            for name, wording in OUTAGES.items()
        }

    @classmethod
    def for_settings(cls, settings: Settings) -> Health:
        """Health that masks the secrets of ``settings``."""
        api = _origin(settings.clari_url or settings.clari_base_url)
        places = {"kafka": settings.kafka_bootstrap_servers, "api": api, "auth": api}
        if settings.schema_registry_url:
            places["schema-registry"] = _origin(settings.schema_registry_url)
        return cls(settings.masker().text, places)

    def fail(self, component: str, message: str) -> None:
        current = self._problems.get(component)
        since = current.since if current else time.time()
        masked = self._mask(message)
        self._problems[component] = Problem(masked, since)
        outage = self.outages.get(component)
        if outage is not None:
            outage.failed(masked)

    def clear(self, component: str) -> None:
        if self._problems.pop(component, None) is not None:
            outage = self.outages.get(component)
            if outage is not None:
                outage.recovered()

    def down(self, component: str) -> bool:
        """``component`` is failing now: what it causes elsewhere is detail (DEBUG)."""
        return component in self._problems

    def beat(self) -> None:
        self.loop_heartbeat = time.monotonic()

    @property
    def ok(self) -> bool:
        return not self._problems

    def problems(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for name, p in self._problems.items():
            out[name] = {"message": p.message, "since": p.since}
            outage = self.outages.get(name)
            if outage is not None and outage.down:
                out[name]["failures"] = outage.failures  # since it started
        return out


def _origin(url: str) -> str:
    """Scheme, host and port of ``url``: where it is, without a path or query that may
    hold placeholders or a secret."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "?"
    return f"{parts.scheme}://{host}{port}" if host else "?"
