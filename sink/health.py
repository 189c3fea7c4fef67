"""What is wrong right now, by component, for the health endpoints and the logs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sink.config import Settings


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

    def __init__(self, mask: Callable[[str], str]) -> None:
        self._mask = mask
        self._problems: dict[str, Problem] = {}
        self.started = time.time()
        self.loop_heartbeat = time.monotonic()

    @classmethod
    def for_settings(cls, settings: Settings) -> Health:
        """Health that masks the secrets of ``settings``."""
        return cls(settings.masker().text)

    def fail(self, component: str, message: str) -> None:
        current = self._problems.get(component)
        since = current.since if current else time.time()
        self._problems[component] = Problem(self._mask(message), since)

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
