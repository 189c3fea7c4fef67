"""A real Confluent-compatible Schema Registry for the integration tests: Karapace 6.2.0,
run by ``../shared/tools/registry-here`` on loopback against the test broker, with basic
auth on.

Karapace is installed once per tools home (``$CLARI_TOOLS_HOME``, by default
``~/.cache/clari-tools``; ~2.5 minutes the first time, then nothing). Each test session
runs its own instance from a private tools home whose install is a link to that one, so
a registry a developer runs by hand (``registry-here up`` allows one per tools home)
and other sessions on the machine are left alone; its schemas go to a topic of its own.

Without the tool (a clone with no ``../shared`` next to it) the tests that need the
registry are skipped and say why; under ``CI=true`` they fail instead, so a CI run
never passes without them.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from devkit.kafka_local import free_port

ROOT = Path(__file__).resolve().parents[1]
TOOL_VARIABLE = "REGISTRY_HERE"  # another path to registry-here, if not ../shared/tools
USER, PASSWORD = "sr-user", "sr-Pa55-SECRET"
INSTALL_TIMEOUT_S = 900  # first install: ~2.5 min alone, more on a busy machine


def tool_path() -> Path:
    return Path(os.environ.get(TOOL_VARIABLE) or ROOT.parent / "shared" / "tools" / "registry-here")


def require_tool() -> Path:
    """The registry-here script; skips the test when it is absent, fails under CI."""
    tool = tool_path()
    if tool.is_file() and os.access(tool, os.X_OK):
        return tool
    reason = (
        f"the real Schema Registry tests need {tool} (Karapace through registry-here; "
        f"set {TOOL_VARIABLE}=PATH to point elsewhere)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


class RegistryError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class RealRegistry:
    """One Karapace process; ``stop``/``start`` keep its port, topic and credentials."""

    def __init__(self, tool: Path, kafka: str, home: Path) -> None:
        self.tool = tool
        self.kafka = kafka
        self.home = home
        self.port = free_port()
        self.topic = f"_schemas-{uuid.uuid4().hex[:8]}"
        self.user, self.password = USER, PASSWORD
        self._auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.running = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, *args: str, timeout: float = 120) -> str:
        env = {**os.environ, "CLARI_TOOLS_HOME": str(self.home)}
        done = subprocess.run(
            [str(self.tool), *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"registry-here {args[0]} failed:\n{done.stderr[-3000:]}")
        return done.stdout.strip()

    def install(self) -> None:
        """Install once into the user's tools home (``$CLARI_TOOLS_HOME`` or its default;
        a no-op after the first time); link this session's home to that install."""
        for args in (["install"], ["where"]):
            done = subprocess.run(
                [str(self.tool), *args],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
            )
            if done.returncode != 0:
                raise RuntimeError(f"registry-here {args[0]} failed:\n{done.stderr[-3000:]}")
        where = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
        installed = Path(where["install"])
        link = self.home / "registry" / installed.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(installed, target_is_directory=True)

    def start(self) -> None:
        """Start and wait until it accepts writes (registry-here's own readiness wait)."""
        args = ("up", "--bootstrap", self.kafka, "--port", str(self.port), "--topic",
                self.topic, "--user", self.user, "--password", self.password)  # fmt: skip
        try:
            self._run(*args)
        except RuntimeError:
            # registry-here gives up after 60 s; on a 2-core machine shared by several
            # test runs a start has taken 45 s. One more try before failing the tests.
            self._run(*args)
        self.running = True

    def start_in_background(self) -> subprocess.Popen[str]:
        """``registry-here up`` without waiting for it: to watch the registry come up."""
        env = {**os.environ, "CLARI_TOOLS_HOME": str(self.home)}
        self.running = True
        return subprocess.Popen(
            [str(self.tool), "up", "--bootstrap", self.kafka, "--port", str(self.port),
             "--topic", self.topic, "--user", self.user, "--password", self.password],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def stop(self) -> None:
        self._run("down")
        self.running = False

    # -- the Confluent REST API, as a producer or an operator uses it ----------------------
    def request(
        self, method: str, path: str, body: Any = None, auth: bool = True, timeout: float = 10
    ) -> Any:
        """The answer's JSON; RegistryError for any status but 2xx."""
        req = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        if auth:
            req.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed: Any = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise RegistryError(exc.code, parsed) from None

    def register(
        self, subject: str, schema: Any, references: list[dict[str, Any]] | None = None
    ) -> int:
        body: dict[str, Any] = {"schema": json.dumps(schema)}
        if references:
            body["references"] = references
        sid: int = self.request("POST", f"/subjects/{subject}/versions", body)["id"]
        return sid

    def health(self) -> dict[str, Any]:
        found: dict[str, Any] = self.request("GET", "/_health", auth=False, timeout=2)
        return found


def session_registry(tool: Path, kafka: str, home: Path) -> RealRegistry:
    registry = RealRegistry(tool, kafka, home)
    registry.install()
    registry.start()
    return registry
