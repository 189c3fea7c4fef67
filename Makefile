# clari-sink: `make demo` runs the whole thing locally, `make test` runs every check.
# Both set up what they need from nothing: a Python virtualenv in .venv and, through
# Maven, a single-node Apache Kafka broker cached in ~/.cache/clari-sink.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup demo test unit lint kafka-jars schema-registry bench clean

# Deployment tools, as a user has them; .ci/run points them at ../shared/tools when
# Docker is absent. Exported: the image, compose and chart tests run these commands.
ENGINE ?= docker
COMPOSE ?= docker compose
HELM ?= helm
K8S_VALIDATE ?= k8s-validate
KUBE_HERE ?= ../shared/tools/kube-here
PROMETHEUS_HERE ?= ../shared/tools/prometheus-here
IMAGE ?= clari-sink:dev
SEED_IMAGE ?= clari-sink-seed:dev
CHART := deploy/helm/clari-sink
export ENGINE COMPOSE HELM K8S_VALIDATE KUBE_HERE PROMETHEUS_HERE
.PHONY: image seed-image compose-up compose-down chart-check manifests deploy-check

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; sys.exit("Python 3.11 or newer is needed (set PY=...)") if sys.version_info < (3, 11) else None'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

setup: $(STAMP)

kafka-jars: $(STAMP)
	$(BIN)/python -m devkit.kafka_local fetch

# The real Schema Registry of the Avro tests: Karapace, installed once into
# ~/.cache/clari-tools by registry-here (~2.5 min), before pytest so that no test's
# timeout pays for it. Without the tool those tests skip (and fail under CI=true).
REGISTRY_HERE ?= ../shared/tools/registry-here
schema-registry:
	@if [ -x "$(REGISTRY_HERE)" ]; then "$(REGISTRY_HERE)" install; \
	else echo "$(REGISTRY_HERE) not found: the real Schema Registry tests will skip"; fi

demo: $(STAMP) kafka-jars
	$(BIN)/python -m devkit.demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

test: $(STAMP) kafka-jars schema-registry lint
	$(BIN)/pytest -q -ra --durations=10

# The matrix of bench/README.md with the peer (Kafka Connect + Aiven's HTTP sink, its
# runtime fetched from Maven Central once): about 35 minutes. ARGS="--quick": 3 minutes.
bench: $(STAMP) kafka-jars
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench.peer fetch
	$(BIN)/python -m bench.run $(ARGS)

# The sink's image (default target) and the demo seeder's (target seed).
image:
	$(ENGINE) build --target sink -t $(IMAGE) .

seed-image:
	$(ENGINE) build --target seed -t $(SEED_IMAGE) .

compose-up:
	$(COMPOSE) up -d --build

compose-down:
	$(COMPOSE) down

# Offline: helm lint --strict, and the chart's output and deploy/kubernetes validated
# for Kubernetes 1.29 and the newest schema (also run by `make test`).
chart-check:
	$(HELM) lint --strict $(CHART)
	$(K8S_VALIDATE) --helm $(CHART) deploy/kubernetes

# deploy/kubernetes/clari-sink.yaml is the chart rendered with deploy/helm/plain-manifests.values.yaml.
manifests:
	$(BIN)/python -m deploy.checks.render --helm "$(HELM)" --write

# Against a real API server and a real Prometheus (deploy/README.md, "How it was tested"):
# about 3 minutes once the tools are built.
deploy-check: $(STAMP) kafka-jars
	bash deploy/checks/kube.sh
	$(BIN)/python -m deploy.checks.prometheus_check

clean:
	rm -rf $(VENV) .local .mypy_cache .ruff_cache .pytest_cache
