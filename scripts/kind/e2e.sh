#!/usr/bin/env bash
# End-to-end check of qpu-k8s on a real cluster (kind, Kubernetes 1.34+):
#   build both images, load them into kind, `helm install` the chart with the in-cluster
#   emulator (which also creates the emulator's QuantumBackends), then
#   1. a pod asking for `quantum.example.com/qpu: 1` (device plugin) prints Bell counts;
#   2. a Job whose two containers each hold a DRA claim (a superconducting and a
#      neutral-atom QPU, selected by attribute) prints Bell counts from Qiskit and Pulser;
#   3. deleting those pods releases the vendor sessions: the emulator's count of open
#      sessions goes back to zero.
# On failure it prints the cluster's state and the agents' logs.
#
# Needs docker and kind on PATH; helm and kubectl come from the project's pinned wheels
# (python -m testsupport.tools). Settings (env):
#   CLUSTER          kind cluster name                      (qpu-k8s-e2e)
#   KIND_NODE_IMAGE  node image, 1.34 or newer              (kindest/node:v1.34.0)
#   PYTHON           the project's venv Python              (.venv/bin/python)
#   TIMEOUT          seconds for each wait                  (300)
#   KEEP_CLUSTER     1 keeps the cluster afterwards         (0)
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${CLUSTER:-qpu-k8s-e2e}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.34.0}"
PYTHON="${PYTHON:-.venv/bin/python}"
TIMEOUT="${TIMEOUT:-300}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
NS=qpu-system
RELEASE=qpu-k8s
EMULATOR_SVC="${RELEASE}-emulator"
IBM_BACKEND=fake_manila

log() { printf '\n=== %s\n' "$*"; }
die() { printf 'e2e: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "needs $1 on PATH"; }

need docker
need kind
[ -x "$PYTHON" ] || die "no Python at $PYTHON (run ./dev.sh test once, or set PYTHON)"
HELM="$("$PYTHON" -m testsupport.tools path helm)"
KUBECTL_BIN="$("$PYTHON" -m testsupport.tools path kubectl)"
KUBECONFIG_FILE="$(mktemp)"
kubectl() { "$KUBECTL_BIN" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
# The image names the chart and the example manifests use by default.
IMAGE="$("$PYTHON" -c 'from testsupport.example_workloads import chart_defaults as d; print(d()["image"])')"
EMULATOR_IMAGE="${IMAGE}-emulator"

# wait_until WHAT COMMAND...: poll COMMAND until it succeeds or TIMEOUT passes.
wait_until() {
  local what="$1" deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@" >/dev/null; do
    if ((SECONDS >= deadline)); then
      printf 'e2e: timed out after %ss waiting for %s\n' "$TIMEOUT" "$what" >&2
      return 1
    fi
    sleep 2
  done
}

diagnose() {
  log "diagnostics"
  kubectl get nodes -o wide || true
  kubectl get pods -A -o wide || true
  kubectl get quantumbackends -o wide || true
  kubectl get resourceslices,resourceclaims -A || true
  kubectl get events -A --sort-by=.lastTimestamp | tail -40 || true
  for sel in operator device-plugin dra emulator; do
    kubectl -n "$NS" logs -l "app.kubernetes.io/component=$sel" --all-containers --tail=80 || true
  done
}

cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then diagnose; fi
  if [ "$KEEP_CLUSTER" != 1 ]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
  rm -f "$KUBECONFIG_FILE"
  exit "$rc"
}
trap cleanup EXIT

# --- cluster, images, chart ------------------------------------------------------------------
log "kind cluster $CLUSTER ($KIND_NODE_IMAGE)"
if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" \
    --config scripts/kind/kind-config.yaml --wait 180s
fi
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE"
kubectl version
kubectl api-resources --api-group=resource.k8s.io | grep -q deviceclasses \
  || die "the cluster does not serve resource.k8s.io (DRA): use a 1.34+ node image"

log "images $IMAGE and $EMULATOR_IMAGE"
docker build --target agents -t "$IMAGE" .
docker build --target emulator -t "$EMULATOR_IMAGE" .
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -F "$IMAGE"
kind load docker-image --name "$CLUSTER" "$IMAGE" "$EMULATOR_IMAGE"

log "helm install $RELEASE (emulator on)"
"$HELM" --kubeconfig "$KUBECONFIG_FILE" upgrade --install "$RELEASE" charts/qpu-k8s \
  --namespace "$NS" --create-namespace \
  --set emulator.enabled=true --set image.pullPolicy=Never \
  --wait --timeout "${TIMEOUT}s"
kubectl -n "$NS" get pods -o wide

log "QuantumBackends Ready, devices advertised"
kubectl wait --for=condition=Ready quantumbackend/emulator-manila quantumbackend/emulator-fresnel \
  --timeout="${TIMEOUT}s"
kubectl get quantumbackends -o wide
qpus_allocatable() {
  kubectl get nodes -o jsonpath='{range .items[*]}{.status.allocatable.quantum\.example\.com/qpu}{"\n"}{end}' \
    | grep -qE '^[1-9]'
}
wait_until "allocatable quantum.example.com/qpu on a node" qpus_allocatable
slices_published() { [ -n "$(kubectl get resourceslices -o name)" ]; }
wait_until "ResourceSlices of the emulator's QPUs" slices_published
kubectl get resourceslices

# --- helpers on the emulator's own API (through the apiserver's service proxy) ------------
emulator_sessions() {
  kubectl get --raw "/api/v1/namespaces/$NS/services/http:$EMULATOR_SVC:8080/proxy/_emulator/sessions"
}
# session_count open|total: sessions of the IBM backend.
session_count() {
  emulator_sessions | "$PYTHON" -c '
import json, sys
counts = json.load(sys.stdin)["counts"].get(sys.argv[1], {"open": 0, "closed": 0})
print(counts["open"] if sys.argv[2] == "open" else counts["open"] + counts["closed"])
' "$IBM_BACKEND" "$1"
}
no_open_sessions() { [ "$(session_count open)" = 0 ]; }

# check_bell LOGFILE WANTED...: the last JSON line's counts are mostly the WANTED outcomes.
check_bell() {
  "$PYTHON" - "$@" <<'PY'
import json, sys
path, wanted = sys.argv[1], sys.argv[2:]
lines = [l for l in open(path).read().splitlines() if l.startswith("{")]
if not lines:
    sys.exit(f"no JSON result line in {path}")
result = json.loads(lines[-1])
counts = result["counts"]
total = sum(counts.values())
share = sum(counts.get(k, 0) for k in wanted) / max(total, 1)
print(f"{result['resource']}: {counts} -> {share:.0%} in {wanted}")
if total == 0 or share < 0.6:
    sys.exit(f"not a Bell pair: {counts}")
PY
}

pod_done() {
  local phase
  phase="$(kubectl get "$1" -o jsonpath='{.status.phase}')"
  [ "$phase" = Failed ] && die "$1 failed: $(kubectl logs "$1" --all-containers --tail=50)"
  [ "$phase" = Succeeded ]
}

WORK="$(mktemp -d)"

# --- 1. device plugin: quantum.example.com/qpu: 1 ---------------------------------------------
log "device plugin: pod with quantum.example.com/qpu: 1"
before="$(session_count total)"
kubectl apply -f manifests/examples/pods/bell-qiskit.yaml
wait_until "pod/bell-qiskit to succeed" pod_done pod/bell-qiskit
kubectl logs pod/bell-qiskit >"$WORK/bell-qiskit.log"
check_bell "$WORK/bell-qiskit.log" 00 11
[ "$(session_count total)" -gt "$before" ] || die "the pod ran without a session being opened"
kubectl delete pod bell-qiskit --wait=true
wait_until "the device plugin to release the session" no_open_sessions
echo "session released"

# --- 2. DRA: one claim per container, selected by technology ---------------------------------
log "DRA: Job with a superconducting and a neutral-atom claim (Qiskit + Pulser)"
before="$(session_count total)"
kubectl apply -f manifests/examples/jobs/paper-scripts.yaml
kubectl wait --for=condition=Complete job/paper-scripts --timeout="${TIMEOUT}s" \
  || die "job/paper-scripts did not complete: $(kubectl logs job/paper-scripts --all-containers --tail=50)"
kubectl get resourceclaims -o wide
kubectl logs job/paper-scripts -c qiskit >"$WORK/qiskit.log"
kubectl logs job/paper-scripts -c pulser >"$WORK/pulser.log"
check_bell "$WORK/qiskit.log" 00 11
check_bell "$WORK/pulser.log" 01 10
[ "$(session_count total)" -gt "$before" ] || die "the claim was prepared without a session"
kubectl delete job paper-scripts --cascade=foreground --wait=true
wait_until "the DRA driver to release the session" no_open_sessions
echo "session released"

log "e2e passed"
