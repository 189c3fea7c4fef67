"""docker-compose.yml, Dockerfile and deploy/kubernetes: what can be checked without an
engine (tests/integration/test_compose_stack.py and test_image.py run them)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from sink.config import Settings

ROOT = Path(__file__).resolve().parents[2]
KNOWN = {info.alias for info in Settings.model_fields.values()}


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def test_compose_has_kafka_emulator_seed_and_sink_from_the_right_targets() -> None:
    services = compose()["services"]
    assert set(services) == {"kafka", "emulator", "seed", "sink"}
    assert services["kafka"]["image"].startswith("apache/kafka:4")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    # The seeder is its own target: the sink's image carries no dev kit.
    assert services["seed"]["build"] == {"context": ".", "target": "seed"}
    for name in ("emulator", "sink"):
        assert services[name]["build"] == {"context": ".", "target": "sink"}
    assert services["sink"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["seed"]["restart"] == "on-failure"
    for name in ("emulator", "seed", "sink"):
        assert services[name]["read_only"] is True
        assert services[name]["cap_drop"] == ["ALL"]


def test_every_published_port_listens_on_loopback_only() -> None:
    ports = [p for svc in compose()["services"].values() for p in svc.get("ports", [])]
    assert len(ports) == 3
    for port in ports:
        assert re.fullmatch(r"127\.0\.0\.1:\$\{[A-Z_]+:-\d+\}:\d+", port), port


def test_sink_environment_names_are_settings_the_sink_reads() -> None:
    services = compose()["services"]
    env = services["sink"]["environment"]
    assert set(env) <= KNOWN, f"unknown settings: {set(env) - KNOWN}"
    # The sink in compose must point at the compose broker and emulator.
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["CLARI_BASE_URL"].startswith("http://emulator:8081/")
    seed_cmd = services["seed"]["command"]
    assert seed_cmd[seed_cmd.index("--topic") + 1] == env["KAFKA_TOPICS"]
    # The broker advertises the host port it is published on.
    kafka = services["kafka"]
    host_port = kafka["ports"][0].rsplit(":", 1)[0].split(":", 1)[1]
    assert kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].endswith(f"127.0.0.1:{host_port}")


def test_dockerfile_targets_and_runtime_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\S+)", text, re.MULTILINE)
    assert [name for _, name in stages] == ["wheel", "runtime", "seed", "sink"]  # sink: default
    assert "--require-hashes -r /tmp/requirements.lock" in text
    assert "COPY requirements.lock /tmp/requirements.lock" in text
    sink_stage = text.split("AS sink", 1)[1]
    assert 'ENTRYPOINT ["clari-sink"]' in sink_stage and "devkit" not in sink_stage
    assert "ADMIN_PORT" in sink_stage.split("HEALTHCHECK", 1)[1]
    assert "USER 10001" in text


def test_kubernetes_manifests_use_real_settings_and_probes() -> None:
    docs = {}
    for path in (ROOT / "deploy" / "kubernetes").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind"):
                docs[doc["kind"]] = doc
    assert {"ConfigMap", "Secret", "Deployment", "Service"} <= set(docs)
    assert set(docs["ConfigMap"]["data"]) <= KNOWN
    assert set(docs["Secret"]["stringData"]) <= KNOWN
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > float(docs["ConfigMap"]["data"]["SINK_SHUTDOWN_TIMEOUT_S"])
