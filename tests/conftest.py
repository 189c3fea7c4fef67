from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit import kafka_local
from tests.support import Emulator


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real broker: $KAFKA_BOOTSTRAP_SERVERS, or one started here."""
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        kafka_local.wait_ready(existing)
        yield existing
        return
    broker = kafka_local.start(tmp_path_factory.mktemp("kafka"))
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = Emulator().start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path
