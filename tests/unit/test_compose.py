"""docker-compose.yml cannot run here (no Docker engine): check what can be checked."""

from __future__ import annotations

from pathlib import Path

import yaml

from sink.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_compose_has_kafka_emulator_seed_and_sink() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"kafka", "emulator", "seed", "sink"}
    assert services["kafka"]["image"].startswith("apache/kafka:4")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name in ("emulator", "seed", "sink"):
        assert services[name]["build"] == "."
    assert services["sink"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["seed"]["restart"] == "no"


def test_sink_environment_names_are_settings_the_sink_reads() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    known = {info.alias for info in Settings.model_fields.values()}
    env = compose["services"]["sink"]["environment"]
    assert set(env) <= known, f"unknown settings: {set(env) - known}"
    # The sink in compose must point at the compose broker and emulator.
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["CLARI_BASE_URL"].startswith("http://emulator:8081/")
    seed_cmd = compose["services"]["seed"]["command"]
    assert seed_cmd[seed_cmd.index("--topic") + 1] == env["KAFKA_TOPICS"]


def test_dockerfile_runs_the_cli() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["clari-sink"]' in text and "USER 10001" in text


def test_kubernetes_manifests_use_real_settings_and_probes() -> None:
    docs = {}
    for path in (ROOT / "deploy" / "kubernetes").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        docs[doc["kind"]] = doc
    assert set(docs) == {"ConfigMap", "Secret", "Deployment", "Service"}
    known = {info.alias for info in Settings.model_fields.values()}
    assert set(docs["ConfigMap"]["data"]) <= known
    assert set(docs["Secret"]["stringData"]) <= known
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > float(docs["ConfigMap"]["data"]["SINK_SHUTDOWN_TIMEOUT_S"])
