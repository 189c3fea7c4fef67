#!/usr/bin/env bash
# make deploy-check, part 1: the chart and deploy/kubernetes against a real API server
# (kube-here: kube-apiserver v1.34 + etcd, controllers, scheduler and one kwok node).
#   1. server-side dry run into a namespace enforcing PodSecurity "restricted" (and
#      warning at it): refused or warned about is a failure; a non-compliant pod is
#      refused there (the enforcement is real)
#   2. helm install, rollout status, the Service gets an endpoint per replica
#   3. helm upgrade to a new image tag: the rolling update completes, every pod runs it
#   4. deploy/kubernetes applied for real in a second restricted namespace, rolled out
# Needs KUBE_HERE (default ../shared/tools/kube-here) and HELM; kubectl on PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
KUBE_HERE=${KUBE_HERE:-../shared/tools/kube-here}
read -r -a HELM_CMD <<<"${HELM:-helm}"
if ! command -v "${HELM_CMD[0]}" >/dev/null && [ -x ../shared/tools/helm-here ]; then
  HELM_CMD=(../shared/tools/helm-here)
fi
CHART=deploy/helm/clari-sink
NS=clari-sink-check
NS_PLAIN=clari-sink-plain
T0=$SECONDS
WORK=$(mktemp -d)
step() { printf '  %5d s  %s\n' $((SECONDS - T0)) "$*"; }
fail() { echo "deploy-check (kubernetes): FAILED: $*" >&2; exit 1; }
cleanup() { "$KUBE_HERE" down >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

"$KUBE_HERE" up --nodes >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "kube-here up --nodes"; }
eval "$("$KUBE_HERE" env)"
step "API server $(kubectl version -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') with nodes: $(kubectl get nodes -o name | tr '\n' ' ')"

restricted_ns() {
  kubectl create namespace "$1" >/dev/null
  kubectl label namespace "$1" >/dev/null \
    pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/enforce-version=latest \
    pod-security.kubernetes.io/warn=restricted pod-security.kubernetes.io/audit=restricted
}
restricted_ns "$NS"
restricted_ns "$NS_PLAIN"
step "namespaces $NS and $NS_PLAIN enforce PodSecurity restricted"

# 1. Server-side dry runs: no error, and no warning at all on stderr.
INSTALL=(--set secret.values.CLARI_API_TOKEN=check-token --set secret.values.CLARI_PARTNER_KEY=check-partner
  --set secret.values.ADMIN_TOKEN=check-admin-token-0123456789 --set replicaCount=2 --set image.tag=0.1.0)
"${HELM_CMD[@]}" template clari-sink "$CHART" -n "$NS" "${INSTALL[@]}" >"$WORK/chart.yaml"
kubectl apply -n "$NS" --dry-run=server -f "$WORK/chart.yaml" >"$WORK/dry.out" 2>"$WORK/dry.err" ||
  { cat "$WORK/dry.err"; fail "server-side dry run of the chart"; }
[ ! -s "$WORK/dry.err" ] || { cat "$WORK/dry.err"; fail "warnings in the chart's dry run"; }
sed 's/^/    /' "$WORK/dry.out"
kubectl apply -n "$NS_PLAIN" --dry-run=server -f deploy/kubernetes/ >"$WORK/dry2.out" 2>"$WORK/dry2.err" ||
  { cat "$WORK/dry2.err"; fail "server-side dry run of deploy/kubernetes"; }
[ ! -s "$WORK/dry2.err" ] || { cat "$WORK/dry2.err"; fail "warnings in deploy/kubernetes' dry run"; }
step "server-side dry runs: chart ($(wc -l <"$WORK/dry.out") objects) and deploy/kubernetes ($(wc -l <"$WORK/dry2.out") objects), no warning"
# The namespace really refuses what is not restricted (the default seccomp-less pod).
if kubectl run -n "$NS" not-restricted --image=busybox --dry-run=server >"$WORK/bad.out" 2>&1; then
  fail "a pod without seccompProfile was accepted: the namespace does not enforce restricted"
fi
grep -q 'violates PodSecurity "restricted' "$WORK/bad.out" || { cat "$WORK/bad.out"; fail "unexpected refusal"; }
step "control: a pod without seccompProfile/runAsNonRoot is refused ($(grep -o 'violates PodSecurity "restricted:[^"]*"' "$WORK/bad.out"))"

# 2. Install and roll out for real.
"${HELM_CMD[@]}" install clari-sink "$CHART" -n "$NS" "${INSTALL[@]}" >"$WORK/install.log" 2>&1 ||
  { cat "$WORK/install.log"; fail "helm install"; }
! grep -qi warning "$WORK/install.log" || { cat "$WORK/install.log"; fail "warnings in helm install"; }
kubectl rollout status -n "$NS" deploy/clari-sink --timeout=180s
ready_endpoints() {
  kubectl get endpointslices -n "$1" -l kubernetes.io/service-name=clari-sink \
    -o jsonpath='{range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{"\n"}{end}' | grep -c . || true
}
for _ in $(seq 60); do [ "$(ready_endpoints "$NS")" = 2 ] && break; sleep 1; done
[ "$(ready_endpoints "$NS")" = 2 ] || { kubectl get endpointslices -n "$NS" -o yaml; fail "the Service has no 2 ready endpoints"; }
step "helm install: rolled out, Service clari-sink has 2 ready endpoints"

# 3. Rolling update to a new tag.
"${HELM_CMD[@]}" upgrade clari-sink "$CHART" -n "$NS" --reuse-values --set image.tag=0.1.1 >"$WORK/upgrade.log" 2>&1 ||
  { cat "$WORK/upgrade.log"; fail "helm upgrade"; }
kubectl rollout status -n "$NS" deploy/clari-sink --timeout=180s
# Old pods end after their grace period (the drain): wait until only new ones remain.
live_images() {
  kubectl get pods -n "$NS" -l app.kubernetes.io/instance=clari-sink -o go-template \
    --template '{{range .items}}{{if not .metadata.deletionTimestamp}}{{(index .spec.containers 0).image}}{{"\n"}}{{end}}{{end}}' | sort | uniq -c
}
for _ in $(seq 120); do [ "$(live_images | awk '{print $2}')" = "ghcr.io/your-org/clari-sink:0.1.1" ] && break; sleep 1; done
live_images | sed 's/^/    /'
[ "$(live_images | awk '{print $2}')" = "ghcr.io/your-org/clari-sink:0.1.1" ] || fail "pods do not all run 0.1.1"
for _ in $(seq 60); do [ "$(ready_endpoints "$NS")" = 2 ] && break; sleep 1; done
[ "$(ready_endpoints "$NS")" = 2 ] || fail "the Service lost its endpoints after the upgrade"
step "rolling update to 0.1.1 complete (revision $(kubectl get deploy -n "$NS" clari-sink -o jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}')), 2 ready endpoints"

# 4. The plain manifests, applied for real.
kubectl apply -n "$NS_PLAIN" -f deploy/kubernetes/ >"$WORK/plain.out" 2>"$WORK/plain.err" ||
  { cat "$WORK/plain.err"; fail "kubectl apply deploy/kubernetes"; }
[ ! -s "$WORK/plain.err" ] || { cat "$WORK/plain.err"; fail "warnings applying deploy/kubernetes"; }
kubectl rollout status -n "$NS_PLAIN" deploy/clari-sink --timeout=180s
for _ in $(seq 60); do [ "$(ready_endpoints "$NS_PLAIN")" = 2 ] && break; sleep 1; done
[ "$(ready_endpoints "$NS_PLAIN")" = 2 ] || fail "deploy/kubernetes: the Service has no 2 ready endpoints"
step "deploy/kubernetes applied in $NS_PLAIN: rolled out, 2 ready endpoints"
echo "deploy-check (kubernetes): OK in $((SECONDS - T0)) s"
