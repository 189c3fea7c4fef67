"""The peer: Kafka Connect (standalone) running Aiven's HTTP sink connector.

What a user would otherwise deploy to push a topic into an HTTP API. The connector is
the ready plugin folder in ``../shared/peers/aiven-http-connector`` (``$BENCH_PEER_PLUGIN``
overrides it); Kafka Connect's runtime comes from Maven Central, fetched once by the
machine's Maven into ``~/.cache/clari-sink/connect-4.1.1`` (as devkit/kafka_local.py
fetches the broker). Its settings are the fairest equivalent of Upload Entity Data that
the plugin's README gives: Clari's exact body, 100 records a call, one task per
partition (one call in flight per task, its only concurrency).

    python -m bench.peer fetch      # only download the runtime's jars (printed: their folder)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.procs import PARTNER, TOKEN, Emulator, Measured, get_json
from devkit import kafka_local

CONNECT_VERSION = os.environ.get("CLARI_SINK_CONNECT_VERSION", "4.1.1")
LOG4J_VERSION = kafka_local.LOG4J_VERSION
REPO = Path(__file__).resolve().parents[1]
PLUGIN = Path(
    os.environ.get("BENCH_PEER_PLUGIN") or REPO.parent / "shared" / "peers" / "aiven-http-connector"
)
CONNECTOR = "io.aiven.kafka.connect.http.HttpSinkConnector"
HEAP = ["-Xms256M", "-Xmx2G", "-XX:+UseG1GC"]  # the plugin README's command line

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.clari-sink</groupId><artifactId>connect-fetch</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-json</artifactId>
      <version>{kafka}</version></dependency>
    <!-- Connect logs through slf4j 1.x: this binding sends it to log4j2 (a file). -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="{log}"><PatternLayout pattern="%d %-5p [%c{{1}}] %m%n"/></File>
  </Appenders>
  <Loggers>
    <Logger name="org.apache.kafka.connect" level="INFO"/>
    <Logger name="io.aiven" level="INFO"/>
    <Root level="WARN"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""


def cache_dir() -> Path:
    return kafka_local.cache_dir().parent / f"connect-{CONNECT_VERSION}"


def fetch_jars() -> Path:
    """Download Kafka Connect's runtime once; later calls return the cached folder at once."""
    pom = _POM.format(kafka=CONNECT_VERSION, log4j=LOG4J_VERSION)
    return kafka_local.maven_fetch(pom, cache_dir(), f"Kafka Connect {CONNECT_VERSION}")


def plugin_dir() -> Path:
    if not any(PLUGIN.glob("http-connector-for-apache-kafka-*.jar")):
        raise FileNotFoundError(
            f"the peer's plugin folder {PLUGIN} has no http-connector-for-apache-kafka jar "
            "(set BENCH_PEER_PLUGIN)"
        )
    return PLUGIN


def _properties(values: dict[str, Any]) -> str:
    return "".join(f"{k}={v}\n" for k, v in values.items())


class Peer(Measured):
    """Kafka Connect standalone with the HTTP sink on ``topic``, sending to ``emu``."""

    def __init__(
        self,
        workdir: Path,
        bootstrap: str,
        topic: str,
        partitions: int,
        emu: Emulator,
        name: str,
        max_retries: int | None = None,
    ) -> None:
        libs = fetch_jars()
        plugin = plugin_dir()
        if workdir.exists():  # a run's own logs and offsets, not the last run's too
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True)
        self.rest_port = kafka_local.free_port()
        # A connector's name is its consumer group: a fresh one reads the topic from the start.
        self.name = f"peer-http-sink-{name}-{time.time():.0f}"
        worker = {
            "bootstrap.servers": bootstrap,
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.storage.StringConverter",
            "offset.storage.file.filename": workdir / "connect.offsets",
            "offset.flush.interval.ms": 10_000,
            "listeners": f"http://127.0.0.1:{self.rest_port}",
            "plugin.path": plugin.parent,
            "plugin.discovery": "service_load",
        }
        connector: dict[str, Any] = {
            "name": self.name,
            "connector.class": CONNECTOR,
            "topics": topic,
            "tasks.max": partitions,
            "http.url": f"{emu.base}/v2/ingest/entity/account?mode=incremental&isLastBatch=true",
            "http.authorization.type": "none",
            "http.headers.content.type": "application/json",
            "http.headers.additional": f"apikey:{TOKEN},partnerkey:{PARTNER}",
            "batching.enabled": "true",
            "batch.max.size": 100,
            "batch.prefix": '[{"sourceEntity":"crm_account","records":[',
            "batch.suffix": "]}]",
            "batch.separator": ",",
        }
        if max_retries is not None:
            # Against a rate limit: the default (1) fails the task at the second 429 in a row.
            connector["max.retries"] = max_retries
        (workdir / "worker.properties").write_text(_properties(worker))
        (workdir / "connector.properties").write_text(_properties(connector))
        (workdir / "log4j2.xml").write_text(_LOG4J2.format(log=workdir / "connect.log"))
        args = [
            "java",
            *HEAP,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={workdir / 'log4j2.xml'}",
            "-cp",
            f"{libs}/*",
            "org.apache.kafka.connect.cli.ConnectStandalone",
            str(workdir / "worker.properties"),
            str(workdir / "connector.properties"),
        ]
        super().__init__(args, None, workdir / "stdout.log")

    def task_states(self) -> dict[str, int]:
        """How many of the connector's tasks are RUNNING, FAILED... (from Connect's REST)."""
        try:
            status = get_json(f"http://127.0.0.1:{self.rest_port}/connectors/{self.name}/status")
        except OSError:
            return {}
        states: dict[str, int] = {}
        for task in status.get("tasks", []):
            states[task["state"]] = states.get(task["state"], 0) + 1
        return states

    def log_tail(self, chars: int = 3000) -> str:
        log = self.log_path.parent / "connect.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return text[-chars:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peer")
    parser.add_argument("action", choices=["fetch"])
    parser.parse_args(argv)
    print(fetch_jars())
    plugin_dir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
