#!/usr/bin/env bash
# Run Kueue (the batch queue, sigs.k8s.io/kueue as build.sh compiled it) against the running
# local cluster, as a host process beside the control plane:
#   up    install its CRDs from the module's source (conversion webhooks pointed at it),
#         start the manager on 127.0.0.1, register its admission webhooks as `url` webhooks
#         on https://127.0.0.1 with a CA this script makes (Kueue's internal cert
#         management is off: it would write a Secret and patch Service-based configs we do
#         not have), and wait until the apiserver reaches them. Idempotent.
#   down  remove the webhook configurations first (so nothing is refused while it stops),
#         then stop the manager. --purge also deletes the CRDs, and with them every Kueue
#         object, and the kueue-system namespace.
# Kueue v0.17 reads its metrics serving certificate from the fixed path /etc/kueue/metrics/certs
# when its cert management is off: up writes the webhook's certificate there (with a marker
# file) and down removes /etc/kueue again, only if the marker says it is ours.
# Only the batch/job integration is on, and only the webhooks of batch and kueue.x-k8s.io
# are registered: the pod/deployment/... webhooks would refuse pods cluster-wide for
# integrations that are not running. down.sh stops it with the cluster.
#
# Usage: kueue.sh up|down [--purge]
# Env:   QPU_K8S_KUEUE_{WEBHOOK,METRICS,HEALTH}_PORT (127.0.0.1; default 19443, 18443, 18081),
#        QPU_K8S_KUEUE_LOG_LEVEL (zap level, default 2), QPU_K8S_UP_TIMEOUT (default 180)
set -Eeuo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LC_TAG=kueue
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"
trap 'die "kueue.sh failed at line $LINENO: $BASH_COMMAND"' ERR
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

WEBHOOK_PORT="${QPU_K8S_KUEUE_WEBHOOK_PORT:-19443}"
METRICS_PORT="${QPU_K8S_KUEUE_METRICS_PORT:-18443}"
HEALTH_PORT="${QPU_K8S_KUEUE_HEALTH_PORT:-18081}"
TIMEOUT="${QPU_K8S_UP_TIMEOUT:-180}"
NAMESPACE=kueue-system
DIR="$RUN_DIR/kueue"; PKI="$DIR/pki"; CERTS="$DIR/serving-certs"
PIDF="$RUN_DIR/pids/kueue.pid"; LOG="$RUN_DIR/logs/kueue.log"; ARGV="$RUN_DIR/state/kueue.argv"
KCFG="$RUN_DIR/kubeconfig"
KUBECTL=("$K8S_BIN/kubectl" --kubeconfig "$KCFG")
WEBHOOK_URL="https://127.0.0.1:$WEBHOOK_PORT"
# The configurations' names as upstream's kustomize gives them.
MUTATING=kueue-mutating-webhook-configuration
VALIDATING=kueue-validating-webhook-configuration
ETC=/etc/kueue; ETC_MARK="$ETC/.qpu-local-cluster"
# Upstream's CRDs whose conversion webhook its kustomization enables.
CONVERTED=(localqueues clusterqueues cohorts workloads multikueueclusters)

running() { [ -f "$PIDF" ] && pid_running "$(cat "$PIDF")"; }

# wait_for WHAT CMD...: poll CMD until it succeeds; fail after TIMEOUT, or at once when
# the manager has died (with its log's tail).
wait_for() {
  local what=$1 deadline; shift
  deadline=$(( $(date +%s) + TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    if [ -f "$PIDF" ] && ! running; then tail -n 25 "$LOG" >&2; die "kueue exited while waiting for $what (log: $LOG)"; fi
    [ "$(date +%s)" -lt "$deadline" ] || { tail -n 25 "$LOG" >&2; die "timed out after ${TIMEOUT}s waiting for $what (log: $LOG)"; }
    sleep 0.5
  done
  log "$what: ok"
}

make_certs() {
  mkdir -p "$PKI" "$CERTS"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 -subj "/CN=qpu-local-kueue-webhook-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$CERTS/tls.key" -out "$PKI/tls.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n' > "$PKI/tls.ext"
  openssl x509 -req -in "$PKI/tls.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/tls.ext" -out "$CERTS/tls.crt" 2>/dev/null
  rm -f "$PKI/tls.csr" "$PKI/tls.ext"
  if [ -e "$ETC" ] && [ ! -e "$ETC_MARK" ]; then die "$ETC exists and is not ours (no $ETC_MARK): Kueue reads its metrics certificate from $ETC/metrics/certs"; fi
  mkdir -p "$ETC/metrics/certs"; touch "$ETC_MARK"
  install -m 0600 "$CERTS/tls.key" "$ETC/metrics/certs/tls.key"
  install -m 0644 "$CERTS/tls.crt" "$ETC/metrics/certs/tls.crt"
}

write_config() {
  # Every listener on 127.0.0.1. No leader election (one host process); the visibility
  # API server is off (it would need an APIService and delegated authentication).
  cat > "$DIR/config.yaml" <<EOF
apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: $NAMESPACE
manageJobsWithoutQueueName: false
health:
  healthProbeBindAddress: 127.0.0.1:$HEALTH_PORT
metrics:
  bindAddress: 127.0.0.1:$METRICS_PORT
webhook:
  host: 127.0.0.1
  port: $WEBHOOK_PORT
  certDir: $CERTS
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
featureGates:
  VisibilityOnDemand: false
integrations:
  frameworks:
  - batch/job
EOF
}

install_crds() {
  local ca f name crds=()
  ca=$(base64 -w0 < "$PKI/ca.crt")
  for f in "$KUEUE_SRC"/config/components/crd/bases/kueue.x-k8s.io_*.yaml; do
    name=$(basename "$f" .yaml); name=${name#kueue.x-k8s.io_}
    crds+=("crd/$name.kueue.x-k8s.io")
    if printf '%s\n' "${CONVERTED[@]}" | grep -qx "$name"; then
      "${KUBECTL[@]}" create --dry-run=client -o json -f "$f" \
        | jq --arg url "$WEBHOOK_URL/convert" --arg ca "$ca" \
            '.spec.conversion = {strategy: "Webhook", webhook: {clientConfig: {url: $url, caBundle: $ca}, conversionReviewVersions: ["v1"]}}' \
        | "${KUBECTL[@]}" apply --server-side --force-conflicts --field-manager=qpu-local-kueue -f - >/dev/null
    else
      "${KUBECTL[@]}" apply --server-side --force-conflicts --field-manager=qpu-local-kueue -f "$f" >/dev/null
    fi
  done
  "${KUBECTL[@]}" wait --for=condition=Established --timeout="${TIMEOUT}s" "${crds[@]}" >/dev/null
  log "CRDs installed from $KUEUE_SRC/config/components/crd/bases"
}

# The module's webhook manifests, reduced to the batch and kueue.x-k8s.io webhooks, each
# pointed at the manager on 127.0.0.1 with our CA; the Job webhooks skip kube-system and
# kueue-system as upstream's kustomization has it.
install_webhooks() {
  local ca
  ca=$(base64 -w0 < "$PKI/ca.crt")
  "${KUBECTL[@]}" create --dry-run=client -o json -f "$KUEUE_SRC/config/components/webhook/manifests.yaml" \
    | jq -s --arg base "$WEBHOOK_URL" --arg ca "$ca" --arg mut "$MUTATING" --arg val "$VALIDATING" --arg ns "$NAMESPACE" '
        {apiVersion: "v1", kind: "List", items: [.[] | if .kind == "List" then .items[] else . end
        | .metadata.name = (if .kind == "MutatingWebhookConfiguration" then $mut else $val end)
        | .webhooks |= [ .[]
            | select(any(.rules[]; any(.apiGroups[]; . == "batch" or . == "kueue.x-k8s.io")))
            | .clientConfig = {url: ($base + .clientConfig.service.path), caBundle: $ca}
            | if any(.rules[]; any(.apiGroups[]; . == "batch"))
              then .namespaceSelector = {matchExpressions: [{key: "kubernetes.io/metadata.name", operator: "NotIn", values: ["kube-system", $ns]}]}
              else . end ]]}' \
    | "${KUBECTL[@]}" apply --server-side --force-conflicts --field-manager=qpu-local-kueue -f - >/dev/null
  log "webhooks registered at $WEBHOOK_URL: $("${KUBECTL[@]}" get mutatingwebhookconfiguration "$MUTATING" -o jsonpath='{range .webhooks[*]}{.name} {end}')$("${KUBECTL[@]}" get validatingwebhookconfiguration "$VALIDATING" -o jsonpath='{range .webhooks[*]}{.name} {end}')"
}

# The apiserver calls both webhooks of ResourceFlavors on a server-side dry run: success
# means they are reachable and the CA is right.
webhooks_answer() {
  "${KUBECTL[@]}" create --dry-run=server -f - <<'EOF'
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata:
  name: qpu-local-kueue-probe
EOF
}

up() {
  need_root
  ensure_pkgs curl openssl jq iproute2
  [ -x "$KUEUE_BIN/kueue" ] && [ -f "$KUEUE_BIN/.build-ok" ] || die "Kueue v$KUEUE_VERSION is not built ($KUEUE_BIN): run $HERE/build.sh"
  [ -d "$KUEUE_SRC/config/components/crd/bases" ] || die "$KUEUE_SRC missing (Go module cache cleaned?): run $HERE/build.sh"
  "${KUBECTL[@]}" get --raw /readyz >/dev/null 2>&1 || die "no local cluster answers ($KCFG): run $HERE/up.sh first"
  if running && curl -fsS "http://127.0.0.1:$HEALTH_PORT/readyz" >/dev/null 2>&1 && webhooks_answer >/dev/null 2>&1; then
    log "already running (pid $(cat "$PIDF"))"; return 0
  fi
  if running; then die "a kueue process (pid $(cat "$PIDF")) runs but does not answer: run $0 down first"; fi
  local p
  for p in "$WEBHOOK_PORT" "$METRICS_PORT" "$HEALTH_PORT"; do
    if ss -Hltn "sport = :$p" | grep -q .; then die "port $p is taken: $(ss -Hltnp "sport = :$p" | head -n 1)"; fi
  done
  rm -rf "$DIR"; mkdir -p "$DIR" "$RUN_DIR/pids" "$RUN_DIR/logs" "$RUN_DIR/state"
  make_certs
  write_config
  "${KUBECTL[@]}" create namespace "$NAMESPACE" --dry-run=client -o yaml | "${KUBECTL[@]}" apply -f - >/dev/null
  install_crds
  local cmd=(env "KUBECONFIG=$KCFG" "$KUEUE_BIN/kueue" "--config=$DIR/config.yaml" "--zap-log-level=${QPU_K8S_KUEUE_LOG_LEVEL:-2}")
  printf '%s\0' "${cmd[@]}" > "$ARGV"   # restart.sh kueue starts it again from this
  setsid "${cmd[@]}" </dev/null >"$LOG" 2>&1 &
  echo "$!" > "$PIDF"
  log "started kueue v$KUEUE_VERSION (pid $!, log $LOG)"
  wait_for "kueue /readyz" curl -fsS "http://127.0.0.1:$HEALTH_PORT/readyz"
  install_webhooks
  wait_for "the apiserver reaching kueue's webhooks" webhooks_answer
}

down() {
  local purge=$1 pid i
  if [ -f "$KCFG" ] && "${KUBECTL[@]}" get --raw /readyz >/dev/null 2>&1; then
    "${KUBECTL[@]}" delete mutatingwebhookconfiguration "$MUTATING" --ignore-not-found >/dev/null
    "${KUBECTL[@]}" delete validatingwebhookconfiguration "$VALIDATING" --ignore-not-found >/dev/null
  fi
  if running; then
    pid=$(cat "$PIDF")
    log "stopping kueue (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do pid_running "$pid" || break; sleep 0.1; done
    if pid_running "$pid"; then warn "kueue (pid $pid) still running after 15s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$PIDF"
  if [ -e "$ETC_MARK" ]; then rm -rf "$ETC"; fi
  if [ "$purge" = 1 ] && [ -f "$KCFG" ] && "${KUBECTL[@]}" get --raw /readyz >/dev/null 2>&1; then
    # Without the manager, the Workloads' finalizers would hold their namespaces: drop them.
    "${KUBECTL[@]}" get workloads.kueue.x-k8s.io -A -o jsonpath='{range .items[*]}{.metadata.namespace} {.metadata.name}{"\n"}{end}' 2>/dev/null \
      | while read -r ns name; do
          [ -n "$name" ] || continue
          "${KUBECTL[@]}" -n "$ns" patch workloads.kueue.x-k8s.io "$name" --type=merge -p '{"metadata":{"finalizers":[]}}' >/dev/null 2>&1 || true
        done
    local crds
    mapfile -t crds < <("${KUBECTL[@]}" get crd -o name | grep -E '\.kueue\.x-k8s\.io$' || true)
    if [ ${#crds[@]} -gt 0 ]; then "${KUBECTL[@]}" delete --ignore-not-found --timeout=120s "${crds[@]}" >/dev/null || warn "CRDs not all deleted"; fi
    "${KUBECTL[@]}" delete namespace "$NAMESPACE" --ignore-not-found --timeout=120s >/dev/null || true
    log "CRDs and namespace $NAMESPACE deleted"
  fi
  log "down"
}

case "${1:-}" in
  up) up ;;
  down)
    purge=0
    case "${2:-}" in --purge) purge=1 ;; "") ;; *) die "unknown argument: $2" ;; esac
    need_root; down "$purge" ;;
  -h|--help) sed -n '2,20p' "$0" ;;
  *) die "usage: $0 up|down [--purge]" ;;
esac
