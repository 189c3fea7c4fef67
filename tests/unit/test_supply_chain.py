"""Dependencies: floors past published advisories, a hashed lock file, an image built from it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCK = (ROOT / "requirements.lock").read_text()
# The last version of each with a published advisory (see pyproject.toml).
VULNERABLE = {"aiohttp": "3.14.2", "orjson": "3.11.5"}


def locked() -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of sha256 hashes)."""
    pins: dict[str, tuple[Version, int]] = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", LOCK):
        match = re.match(r"([A-Za-z0-9._\-]+)==(\S+)", entry)
        if match:
            name = canonicalize_name(match.group(1))
            pins[name] = (Version(match.group(2)), len(re.findall(r"--hash=sha256:", entry)))
    return pins


def test_floors_exclude_versions_with_published_advisories() -> None:
    requirements = {canonicalize_name(r.name): r for r in map(Requirement, PROJECT["dependencies"])}
    for name, last_bad in VULNERABLE.items():
        assert not requirements[name].specifier.contains(last_bad), name
        assert locked()[name][0] > Version(last_bad), name


def test_every_runtime_dependency_is_locked_with_hashes_within_its_range() -> None:
    pins = locked()
    for requirement in map(Requirement, PROJECT["dependencies"]):
        version, hashes = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version), requirement
        assert hashes >= 1, requirement
    assert all(hashes >= 1 for _, hashes in pins.values())  # pip --require-hashes needs all


def test_the_image_installs_the_lock_by_hash_and_the_sink_without_dependencies() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r /tmp/requirements.lock" in dockerfile
    assert "pip install --no-cache-dir --no-deps /wheels/*.whl" in dockerfile
    assert "pip wheel --no-cache-dir --no-deps" in dockerfile
    assert "requirements.lock" not in (ROOT / ".dockerignore").read_text()
