"""A single-node Apache Kafka (KRaft) broker on loopback, for tests, the demo and benchmarks.

The broker's jars come from Maven Central through the machine's Maven, once, into a
cache outside the repository (``$CLARI_SINK_CACHE`` or ``~/.cache/clari-sink``). Each
broker gets its own state directory with freshly formatted KRaft storage.

Command line::

    python -m devkit.kafka_local start --state-dir .local/kafka   # prints the bootstrap address
    python -m devkit.kafka_local stop --state-dir .local/kafka
    python -m devkit.kafka_local fetch                              # only download the jars
    python -m devkit.kafka_local start --secure ...  # also SSL, mTLS and SASL_SSL listeners

``--secure`` (``start(..., secure=True)``) adds four listeners next to the plain one,
with certificates made at start by openssl (a CA, the broker's certificate for
127.0.0.1/localhost, a client certificate whose key is encrypted, and a second CA that
signed nothing the broker trusts): SSL (the broker's certificate only), MTLS (a client
certificate required) and SASL_SSL with SCRAM-SHA-512 users created by the broker's own
storage tool (``format --add-scram``), and OAUTH: SASL_SSL with OAUTHBEARER, where the
broker takes any unsigned JWT naming a subject and an expiry (Kafka's unsecured
validator: it checks no signature, so a test token endpoint needs no keys; what it tests
is the client's side, getting the token). The plain listener stays as it is, for the
tools that seed and read topics.
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
from dataclasses import dataclass, field
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


# The SCRAM-SHA-512 users of a secured broker: name -> password.
SCRAM_USERS = {"clari-sink": "clari-sink-secret", "other-user": "other-secret"}
CLIENT_KEY_PASSWORD = "client-key-secret"
_STORE_PASSWORD = "broker-store-secret"


@dataclass(frozen=True)
class Certs:
    """PEM files made by :func:`make_certs` in ``dir`` (the client's key encrypted with
    CLIENT_KEY_PASSWORD). ``other_ca`` signed nothing the broker uses; ``rogue_cert`` is
    a client certificate it signed, which the broker must refuse."""

    dir: Path

    def __getattr__(self, name: str) -> Path:
        files = {
            "ca": "ca.pem",
            "broker_p12": "broker.p12",
            "client_cert": "client.pem",
            "client_key": "client.key",
            "other_ca": "other-ca.pem",
            "rogue_cert": "rogue.pem",
            "rogue_key": "rogue.key",
        }
        if name not in files:
            raise AttributeError(name)
        return self.dir / files[name]


@dataclass
class SecureListeners:
    """The ports of a secured broker's listeners, and the certificates for them."""

    ssl_port: int
    mtls_port: int
    sasl_ssl_port: int
    oauth_port: int
    certs: Certs
    users: dict[str, str] = field(default_factory=lambda: dict(SCRAM_USERS))

    def address(self, port: int) -> str:
        return f"127.0.0.1:{port}"


@dataclass
class Broker:
    """A running broker process and where it keeps its state."""

    state_dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    secure: SecureListeners | None = None

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


def _openssl(cwd: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr}")


def _sign(cwd: Path, name: str, ca: str, subject: str, ext: str, key_args: list[str]) -> None:
    """A P-256 key ``name``.key and ``name``.pem signed by ``ca`` (.pem/.key)."""
    _openssl(cwd, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", f"{name}.key", *key_args)  # fmt: skip
    (cwd / f"{name}.ext").write_text(ext)
    passin = ["-passin", f"pass:{CLIENT_KEY_PASSWORD}"] if key_args else []
    _openssl(cwd, "req", "-new", "-key", f"{name}.key", *passin, "-subj", subject,
             "-out", f"{name}.csr")  # fmt: skip
    _openssl(cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
             f"{ca}.key", "-CAcreateserial", "-days", "7", "-sha256", "-extfile",
             f"{name}.ext", "-out", f"{name}.pem")  # fmt: skip


def make_certs(cert_dir: Path) -> Certs:
    """A test CA, the broker's certificate (127.0.0.1 and localhost, so that clients
    verify the host name), a client certificate with an encrypted key, and a second CA
    with a client certificate of its own (what the broker must not trust)."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        _openssl(cert_dir, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{ca}.key", "-out",
                 f"{ca}.pem", "-days", "7", "-subj", f"/CN=clari-sink test {ca}")  # fmt: skip
    server = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    client = "extendedKeyUsage=clientAuth\n"
    encrypted = ["-aes-256-cbc", "-pass", f"pass:{CLIENT_KEY_PASSWORD}"]
    _sign(cert_dir, "broker", "ca", "/CN=localhost", server, [])
    _sign(cert_dir, "client", "ca", "/CN=clari-sink", client, encrypted)
    _sign(cert_dir, "rogue", "other-ca", "/CN=clari-sink", client, [])
    _openssl(cert_dir, "pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key",
             "-certfile", "ca.pem", "-out", "broker.p12", "-passout",
             f"pass:{_STORE_PASSWORD}")  # fmt: skip
    return Certs(cert_dir)


def _secure_props(secure: SecureListeners) -> dict[str, str]:
    certs = secure.certs
    store = {
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(certs.broker_p12),
        "ssl.keystore.password": _STORE_PASSWORD,
        "ssl.key.password": _STORE_PASSWORD,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(certs.ca),
    }
    props: dict[str, str] = {}
    for listener in ("ssl", "mtls", "sasl_ssl", "oauth"):
        props.update({f"listener.name.{listener}.{k}": v for k, v in store.items()})
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    props.update(
        {
            "listener.name.ssl.ssl.client.auth": "none",
            "listener.name.mtls.ssl.client.auth": "required",
            "listener.name.sasl_ssl.ssl.client.auth": "none",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": scram,
            "listener.name.oauth.ssl.client.auth": "none",
            "listener.name.oauth.sasl.enabled.mechanisms": "OAUTHBEARER",
            # No callback handler set: Kafka's unsecured validator (no signature check).
            "listener.name.oauth.oauthbearer.sasl.jaas.config": (
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;"
            ),
        }
    )
    return props


def _write_config(state_dir: Path, port: int, secure: SecureListeners | None = None) -> Path:
    controller_port = free_port()
    listeners = f"PLAINTEXT://127.0.0.1:{port}"
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if secure is not None:
        listeners += (
            f",SSL://127.0.0.1:{secure.ssl_port},MTLS://127.0.0.1:{secure.mtls_port}"
            f",SASL_SSL://127.0.0.1:{secure.sasl_ssl_port},OAUTH://127.0.0.1:{secure.oauth_port}"
        )
        protocols += ",SSL:SSL,MTLS:SSL,SASL_SSL:SASL_SSL,OAUTH:SASL_SSL"
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"{listeners},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": listeners,
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": protocols,
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
        **(_secure_props(secure) if secure is not None else {}),
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


def start(state_dir: Path, port: int | None = None, secure: bool = False) -> Broker:
    """Format fresh KRaft storage in ``state_dir`` and start a broker on loopback
    (with ``secure``, also the SSL, MTLS and SASL_SSL listeners: see the module's doc)."""
    state_dir = state_dir.resolve()
    old = _read_pid(state_dir)
    if old is not None:
        _terminate(old, 10)
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    port = port or free_port()
    listeners = None
    scram: list[str] = []
    if secure:
        certs = make_certs(state_dir / "certs")
        listeners = SecureListeners(free_port(), free_port(), free_port(), free_port(), certs)
        for user, password in listeners.users.items():
            scram += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
    config = _write_config(state_dir, port, listeners)
    fmt = _java_cmd(
        state_dir,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        _cluster_id(),
        "-c",
        str(config),
        "--ignore-formatted",
        *scram,
    )
    done = subprocess.run(fmt, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"formatting KRaft storage failed:\n{done.stdout}\n{done.stderr}")
    broker = Broker(state_dir=state_dir, port=port, process=_launch(state_dir), secure=listeners)
    try:
        wait_ready(broker.bootstrap, state_dir)
    except BaseException:
        broker.stop()
        raise
    (state_dir / "bootstrap").write_text(broker.bootstrap)
    return broker


def describe_secure(broker: Broker) -> str:
    """What a user needs to connect to the secured listeners (the command line's output)."""
    sec = broker.secure
    if sec is None:
        return broker.bootstrap
    c = sec.certs
    user, password = next(iter(sec.users.items()))
    return "\n".join(
        [
            f"PLAINTEXT  {broker.bootstrap}",
            f"SSL        {sec.address(sec.ssl_port)}  KAFKA_SSL_CA_LOCATION={c.ca}",
            f"MTLS       {sec.address(sec.mtls_port)}"
            f"  KAFKA_SSL_CERTIFICATE_LOCATION={c.client_cert}"
            f" KAFKA_SSL_KEY_LOCATION={c.client_key}"
            f" KAFKA_SSL_KEY_PASSWORD={CLIENT_KEY_PASSWORD}",
            f"SASL_SSL   {sec.address(sec.sasl_ssl_port)}  SCRAM-SHA-512 {user} / {password}",
            f"OAUTH      {sec.address(sec.oauth_port)}  SASL_SSL OAUTHBEARER (unsigned JWTs)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.kafka_local")
    parser.add_argument("action", choices=["start", "stop", "fetch"])
    parser.add_argument("--state-dir", type=Path, default=Path(".local/kafka"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--secure", action="store_true", help="add SSL, MTLS, SASL_SSL, OAUTH listeners"
    )
    args = parser.parse_args(argv)
    if args.action == "fetch":
        print(fetch_jars())
    elif args.action == "start":
        print(describe_secure(start(args.state_dir, args.port or None, secure=args.secure)))
    else:
        Broker(state_dir=args.state_dir.resolve(), port=0).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
