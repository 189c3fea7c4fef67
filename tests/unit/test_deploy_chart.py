"""The Helm chart (deploy/helm/clari-sink) and the plain manifests rendered from it.

The values checks need nothing; the rest runs the HELM and K8S_VALIDATE commands the
Makefile names (skipped with the reason when absent, failed under CI=true)."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from deploy.checks.render import OUT, render
from sink.config import Settings
from tests.deploy_tools import require, run

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "clari-sink"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SECRETS = {
    f.alias
    for f in Settings.model_fields.values()
    if SecretStr in typing.get_args(f.annotation) or f.annotation is SecretStr
}


def test_every_setting_is_a_value_and_credentials_only_in_the_secret() -> None:
    every = {f.alias for f in Settings.model_fields.values()}
    config, secret = set(VALUES["config"]), set(VALUES["secret"]["values"])
    assert secret == SECRETS
    assert config == every - SECRETS, (every - SECRETS) ^ config


# What an install must say for itself (deploy/README.md's command sets the entity type).
INSTALL = {
    "CLARI_API_TOKEN": "t" * 20,
    "CLARI_PARTNER_KEY": "p" * 20,
    "CLARI_ENTITY_TYPE": "Account",
}
# Examples of the user's own cluster, not defaults.
EXAMPLES = {"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPICS"}


def test_the_values_defaults_pass_the_sinks_own_checks() -> None:
    env = {k: str(v) for k, v in VALUES["config"].items() if v is not None}
    settings = Settings(**env | INSTALL)
    assert settings.admin_port == 8080
    assert settings.http_rate_sharing == "partitions"


def test_every_value_set_is_the_sinks_own_default() -> None:
    # A value that is not the default changes the sink for everyone who installs the
    # chart: "Incremental" and isLastBatch "true" made CLARI_MODE=Full end Clari's
    # initial load at its first call, and SINK_NULL_VALUES refused the debezium envelope.
    fields = {f.alias: name for name, f in Settings.model_fields.items()}
    default = Settings(**INSTALL)
    differ = {}
    for alias, value in VALUES["config"].items():
        if value is None or alias in EXAMPLES:
            continue
        name = fields[alias]
        chosen = Settings(**INSTALL | {alias: str(value)})
        # Set at all, SINK_NULL_VALUES is a choice the debezium envelope refuses.
        explicit = name == "null_values"
        if getattr(chosen, name) != getattr(default, name) or explicit:
            differ[alias] = value
    assert differ == {}, "set these to null or to the sink's default"


def template(*sets: str) -> dict[str, dict[str, Any]]:
    (helm,) = require("HELM")
    args = [a for s in sets for a in ("--set", s)]
    out = run([*helm, "template", "rel", str(CHART), *args]).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    return {d["kind"]: d for d in docs}


def test_helm_lint_strict() -> None:
    (helm,) = require("HELM")
    done = run([*helm, "lint", "--strict", str(CHART)])
    assert "0 chart(s) failed" in done.stdout


def test_default_render_is_a_restricted_pod_with_its_secret_pdb_and_policy() -> None:
    docs = template("secret.values.CLARI_API_TOKEN=tok", "secret.values.ADMIN_TOKEN=a")
    assert set(docs) == {
        "ServiceAccount", "Secret", "ConfigMap", "Service", "Deployment",
        "PodDisruptionBudget", "NetworkPolicy",
    }  # fmt: skip
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    sink = pod["containers"][0]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert docs["ServiceAccount"]["automountServiceAccountToken"] is False
    assert sink["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["terminationGracePeriodSeconds"] == 45  # SINK_SHUTDOWN_TIMEOUT_S 30 + 15
    refs = [next(iter(r.values()))["name"] for r in sink["envFrom"]]
    assert refs == [docs["ConfigMap"]["metadata"]["name"], docs["Secret"]["metadata"]["name"]]
    assert docs["Secret"]["stringData"] == {"CLARI_API_TOKEN": "tok", "ADMIN_TOKEN": "a"}
    assert not set(docs["ConfigMap"]["data"]) & SECRETS
    ingress = docs["NetworkPolicy"]["spec"]["ingress"]
    assert ingress == [
        {"ports": [{"port": "admin", "protocol": "TCP"}], "from": [{"podSelector": {}}]}
    ]
    assert docs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_admin_port_setting_moves_the_container_port_and_service() -> None:
    docs = template("config.ADMIN_PORT=9100")
    assert docs["ConfigMap"]["data"]["ADMIN_PORT"] == "9100"
    sink = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert sink["ports"][0]["containerPort"] == 9100
    assert docs["Service"]["spec"]["ports"][0]["port"] == 9100


def test_existing_secret_is_used_and_none_created() -> None:
    docs = template("secret.create=false", "secret.existingSecret=vault-synced")
    assert "Secret" not in docs
    env_from = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert {"secretRef": {"name": "vault-synced"}} in env_from


def test_optional_monitoring_and_keda_scale_up_to_the_partition_count() -> None:
    docs = template(
        "serviceMonitor.enabled=true", "prometheusRule.enabled=true",
        "keda.enabled=true", "keda.partitions=6",
    )  # fmt: skip
    assert docs["ServiceMonitor"]["spec"]["jobLabel"] == "app.kubernetes.io/name"
    rules = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert docs["PrometheusRule"]["spec"] == rules
    scaled = docs["ScaledObject"]["spec"]
    assert scaled["maxReplicaCount"] == 6
    assert scaled["triggers"][0]["metadata"]["consumerGroup"] == "clari-sink"
    assert scaled["triggers"][0]["metadata"]["allowIdleConsumers"] == "false"
    assert "replicas" not in docs["Deployment"]["spec"]  # KEDA's to set


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["keda.enabled=true"], "keda.partitions"),
        (["secret.create=false"], "secret.existingSecret is required"),
        (["config.CLARI_API_TOKEN=x"], "config.CLARI_API_TOKEN is a credential"),
        (["terminationGracePeriodSeconds=20"], "must be longer than SINK_SHUTDOWN_TIMEOUT_S"),
    ],
)
def test_bad_values_stop_the_render_naming_them(sets: list[str], message: str) -> None:
    (helm,) = require("HELM")
    args = [a for s in sets for a in ("--set", s)]
    done = run([*helm, "template", "rel", str(CHART), *args], check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_plain_manifests_are_the_chart_rendered() -> None:
    (helm,) = require("HELM")
    assert OUT.read_text() == render(helm), "deploy/kubernetes is stale: run make manifests"


def test_chart_and_plain_manifests_validate_for_1_29_and_the_newest_kubernetes() -> None:
    (validate,) = require("K8S_VALIDATE")
    done = run([*validate, "--helm", str(CHART), "deploy/kubernetes"], timeout=900)
    plain = [
        d
        for path in (ROOT / "deploy" / "kubernetes").glob("*.yaml")
        for d in yaml.safe_load_all(path.read_text())
        if d
    ]
    objects = len(template()) + len(plain)  # every one of them checked, by both validators
    for version in ("1.29", "1.37"):
        for tool in ("kubernetes-validate --strict", "kubeconform -strict"):
            line = f"{tool:34} {version}.0   PASS  {objects} resources"
            assert line in done.stdout, (line, done.stdout[-2000:])
