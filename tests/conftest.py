from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit import kafka_local
from tests import real_registry
from tests.support import Emulator, SinkProcess

FAULT_REPORT: list[dict[str, Any]] = []
REPORT_PATH = Path(__file__).resolve().parents[1] / ".local" / "fault-suite.json"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kafka_local.Broker | None]:
    """The broker started for this run, or None when $KAFKA_BOOTSTRAP_SERVERS names one."""
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        kafka_local.wait_ready(existing)
        yield None
        return
    started = kafka_local.start(tmp_path_factory.mktemp("kafka"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def kafka(broker: kafka_local.Broker | None) -> str:
    """Bootstrap address of a real broker."""
    return broker.bootstrap if broker is not None else os.environ["KAFKA_BOOTSTRAP_SERVERS"]


@pytest.fixture(scope="session")
def schema_registry(
    kafka: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[real_registry.RealRegistry]:
    """A real Schema Registry (Karapace) for this run, basic auth on; skipped with the
    reason when ../shared/tools is absent, failed under CI=true (tests/real_registry.py)."""
    tool = real_registry.require_tool()
    started = real_registry.session_registry(tool, kafka, tmp_path_factory.mktemp("registry"))
    try:
        yield started
    finally:
        if started.running:
            started.stop()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = Emulator().start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    # A test that failed half-way must not leave its sinks running into the next ones.
    SinkProcess.kill_leftovers()


@pytest.fixture
def fault_report() -> list[dict[str, Any]]:
    return FAULT_REPORT


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FAULT_REPORT:
        return
    REPORT_PATH.parent.mkdir(exist_ok=True)
    REPORT_PATH.write_text(json.dumps(FAULT_REPORT, indent=2))
    terminalreporter.section("fault suite")
    terminalreporter.write_line(f"{'scenario':58} {'sent':>7} {'lost':>5} {'dup':>6} {'reord':>6}")
    for row in FAULT_REPORT:
        terminalreporter.write_line(
            f"{row['scenario']:58} {row['sent']:>7} {row['lost']:>5} "
            f"{row['duplicated']:>6} {row['reordered']:>6}"
        )
