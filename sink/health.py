"""What is wrong right now, by component, for the health endpoints and the logs."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(slots=True)
class Problem:
    message: str
    since: float


class Health:
    """Components: ``kafka`` (broker reachable), ``api`` (Clari answering), ``auth``
    (credential accepted), ``output-topics`` (response and dead-letter writes),
    ``schema-registry`` (writer schemas readable, Avro values only)."""

    def __init__(self) -> None:
        self._problems: dict[str, Problem] = {}
        self.started = time.time()
        self.loop_heartbeat = time.monotonic()

    def fail(self, component: str, message: str) -> None:
        current = self._problems.get(component)
        since = current.since if current else time.time()
        self._problems[component] = Problem(message, since)

    def clear(self, component: str) -> None:
        self._problems.pop(component, None)

    def beat(self) -> None:
        self.loop_heartbeat = time.monotonic()

    @property
    def ok(self) -> bool:
        return not self._problems

    def problems(self) -> dict[str, dict[str, object]]:
        return {
            name: {"message": p.message, "since": p.since} for name, p in self._problems.items()
        }
