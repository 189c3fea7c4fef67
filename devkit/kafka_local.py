"""A single-node Apache Kafka (KRaft) broker on loopback, for tests, the demo and benchmarks.

The broker's jars come from Maven Central through the machine's Maven, once, into a
cache outside the repository (``$CLARI_SINK_CACHE`` or ``~/.cache/clari-sink``). Each
broker gets its own state directory with freshly formatted KRaft storage.

Command line::

    python -m devkit.kafka_local start --state-dir .local/kafka   # prints the bootstrap address
    python -m devkit.kafka_local stop --state-dir .local/kafka
    python -m devkit.kafka_local fetch                              # only download the jars
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = os.environ.get("CLARI_SINK_KAFKA_VERSION", "4.1.1")
LOG4J_VERSION = "2.24.3"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.clari-sink</groupId><artifactId>kafka-fetch</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <!-- Kafka logs through slf4j 1.x: this binding sends it to log4j2 (a file). -->
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
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="WARN"/>
    <Root level="WARN"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
"""


def cache_dir() -> Path:
    base = os.environ.get("CLARI_SINK_CACHE") or str(Path.home() / ".cache" / "clari-sink")
    return Path(base) / f"kafka-{KAFKA_VERSION}"


def fetch_jars() -> Path:
    """Download the broker's jars once; later calls return the cached folder at once."""
    pom = _POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION)
    return maven_fetch(pom, cache_dir(), f"Kafka {KAFKA_VERSION}")


def maven_fetch(pom: str, dest: Path, what: str) -> Path:
    """The runtime jars of ``pom``'s dependencies in ``dest``/libs, fetched once with
    Maven (``what`` names them in errors); later calls return the folder at once."""
    libs = dest / "libs"
    stamp = dest / ".complete"
    if stamp.exists():
        return libs
    if shutil.which("mvn") is None:
        raise RuntimeError(f"Maven (mvn) is needed once to fetch the jars of {what}")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pom.xml").write_text(pom)
        staging = Path(tmp) / "libs"
        cmd = [
            "mvn",
            "-q",
            "-B",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"fetching the jars of {what} failed:\n{done.stdout}")
        # The slf4j2 binding would fight the slf4j 1.x binding Kafka needs.
        for jar in staging.glob("log4j-slf4j2-impl-*.jar"):
            jar.unlink()
        if libs.exists():
            shutil.rmtree(libs)
        libs.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, libs)
    stamp.write_text(what)
    return libs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cluster_id() -> str:
    # Kafka's form: a UUID in URL-safe base64. One that starts with '-' would be read by
    # the storage tool as an option, so draw again.
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


@dataclass
class Broker:
    """A running broker process and where it keeps its state."""

    state_dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        pid = self.process.pid if self.process else _read_pid(self.state_dir)
        if pid is None:
            return
        _terminate(pid, timeout)
        if self.process is not None:
            self.process.wait(timeout=5)
        (self.state_dir / "broker.pid").unlink(missing_ok=True)

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop and start again on the same port and storage (for fault tests)."""
        self.stop()
        time.sleep(down_seconds)
        self.process = _launch(self.state_dir)
        wait_ready(self.bootstrap, self.state_dir)


def _read_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "broker.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it if it is our child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def _write_config(state_dir: Path, port: int) -> Path:
    controller_port = free_port()
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(state_dir / "data"),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        "log.flush.interval.messages": "1000000",
    }
    path = state_dir / "server.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    (state_dir / "log4j2.xml").write_text(_LOG4J2.format(log=state_dir / "broker.log"))
    return path


def _java_cmd(state_dir: Path, main: str, *args: str) -> list[str]:
    libs = fetch_jars()
    return [
        "java",
        "-Xms256m",
        "-Xmx768m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={state_dir / 'log4j2.xml'}",
        "-cp",
        f"{libs}/*",
        main,
        *args,
    ]


def _launch(state_dir: Path) -> subprocess.Popen[bytes]:
    config = state_dir / "server.properties"
    out = (state_dir / "stdout.log").open("ab")
    proc = subprocess.Popen(
        _java_cmd(state_dir, "kafka.Kafka", str(config)),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C in the terminal must not kill it before we stop it
    )
    (state_dir / "broker.pid").write_text(str(proc.pid))
    return proc


def wait_ready(bootstrap: str, state_dir: Path | None = None, timeout: float = 90.0) -> None:
    """Block until the broker answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(timeout=2)
            if md.brokers:
                return
        except Exception as exc:  # KafkaException while it boots
            last = exc
        time.sleep(0.3)
    tail = ""
    if state_dir is not None and (state_dir / "stdout.log").exists():
        tail = (state_dir / "stdout.log").read_text(errors="replace")[-3000:]
    raise TimeoutError(f"Kafka at {bootstrap} not ready after {timeout}s: {last}\n{tail}")


def start(state_dir: Path, port: int | None = None) -> Broker:
    """Format fresh KRaft storage in ``state_dir`` and start a broker on loopback."""
    state_dir = state_dir.resolve()
    old = _read_pid(state_dir)
    if old is not None:
        _terminate(old, 10)
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    port = port or free_port()
    config = _write_config(state_dir, port)
    fmt = _java_cmd(
        state_dir,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        _cluster_id(),
        "-c",
        str(config),
        "--ignore-formatted",
    )
    done = subprocess.run(fmt, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"formatting KRaft storage failed:\n{done.stdout}\n{done.stderr}")
    broker = Broker(state_dir=state_dir, port=port, process=_launch(state_dir))
    try:
        wait_ready(broker.bootstrap, state_dir)
    except BaseException:
        broker.stop()
        raise
    (state_dir / "bootstrap").write_text(broker.bootstrap)
    return broker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.kafka_local")
    parser.add_argument("action", choices=["start", "stop", "fetch"])
    parser.add_argument("--state-dir", type=Path, default=Path(".local/kafka"))
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    if args.action == "fetch":
        print(fetch_jars())
    elif args.action == "start":
        print(start(args.state_dir, args.port or None).bootstrap)
    else:
        Broker(state_dir=args.state_dir.resolve(), port=0).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
