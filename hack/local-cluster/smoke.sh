#!/usr/bin/env bash
# Prove that the cluster from up.sh works end to end, and fail when a piece is broken.
# Each check prints PASS/FAIL/SKIP; the last line is "N passed, N failed, N skipped" and the
# exit code is 1 when any check failed. Objects live in namespace qpu-smoke (plus a few
# cluster-scoped ones named smoke*) and are deleted at the end (QPU_K8S_SMOKE_KEEP=1 keeps them).
#
# Usage: smoke.sh [CHECK...]   (default: all; names as printed, e.g. dns kubelet-restart)
set -Euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LC_TAG=smoke
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"
need_root
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

KCFG="$RUN_DIR/kubeconfig"
[ -f "$KCFG" ] || die "no cluster: $KCFG missing (run up.sh)"
K=("$K8S_BIN/kubectl" --kubeconfig "$KCFG")
NS=qpu-smoke
DRIVER=smoke.example.com
CDI_SPEC=/var/run/cdi/smoke.example.com.json
OUT=$(mktemp -d /tmp/qpu-smoke.XXXXXX)
PASS=0; FAIL=0; SKIP=0; FAILED=()

# until_ok SECONDS CMD...: retry CMD (output to $OUT/last) until it succeeds or time runs out.
until_ok() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >"$OUT/last" 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}
check() {  # NAME FUNCTION
  local name=$1 fn=$2 t rc
  if [ ${#SELECTED[@]} -gt 0 ] && ! printf '%s\n' "${SELECTED[@]}" | grep -qx "$name"; then return 0; fi
  t=$(date +%s)
  "$fn" >"$OUT/$name.log" 2>&1; rc=$?
  case $rc in
    0) PASS=$((PASS + 1)); printf '\033[1;32mPASS\033[0m %-24s %3ss %s\n' "$name" "$(( $(date +%s) - t ))" "$(tail -n 1 "$OUT/$name.log")" ;;
    77) SKIP=$((SKIP + 1)); printf '\033[1;33mSKIP\033[0m %-24s %s\n' "$name" "$(tail -n 1 "$OUT/$name.log")" ;;
    *) FAIL=$((FAIL + 1)); FAILED+=("$name"); printf '\033[1;31mFAIL\033[0m %-24s %3ss\n' "$name" "$(( $(date +%s) - t ))"
       sed 's/^/     | /' "$OUT/$name.log" | tail -n 25 ;;
  esac
}
pod_running() { [ "$("${K[@]}" -n "$NS" get pod "$1" -o jsonpath='{.status.phase}')" = Running ]; }
wait_pod() { until_ok "${2:-90}" pod_running "$1" || { "${K[@]}" -n "$NS" describe pod "$1" | tail -n 25; return 1; }; }
image_loaded() { "$CONTAINERD_BIN/ctr" --address "$RUN_DIR/containerd/containerd.sock" -n k8s.io images ls -q | grep -qxF "$1"; }

# ------------------------------------------------------------------ checks
t_node_ready() {
  [ "$("${K[@]}" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ] || return 1
  local kv sv
  kv=$("${K[@]}" get node "$NODE_NAME" -o jsonpath='{.status.nodeInfo.kubeletVersion}')
  sv=$("${K[@]}" version -o json | jq -r .serverVersion.gitVersion)
  [ "$kv" = "v$K8S_VERSION" ] && [ "$sv" = "v$K8S_VERSION" ] || { echo "kubelet $kv, apiserver $sv, want v$K8S_VERSION"; return 1; }
  echo "node $NODE_NAME Ready, kubelet $kv, apiserver $sv"
}

t_dra_api() {
  local kind missing=()
  "${K[@]}" api-resources --api-group=resource.k8s.io -o wide --no-headers > "$OUT/api-resources"
  cat "$OUT/api-resources"
  for kind in DeviceClass ResourceClaim ResourceClaimTemplate ResourceSlice DeviceTaintRule; do
    grep -qE "[[:space:]]resource\.k8s\.io/v1[[:space:]]+(true|false)[[:space:]]+$kind([[:space:]]|$)" "$OUT/api-resources" || missing+=("$kind")
  done
  [ ${#missing[@]} -eq 0 ] || { echo "not served as resource.k8s.io/v1: ${missing[*]}"; return 1; }
  echo "resource.k8s.io/v1: DeviceClass ResourceClaim ResourceClaimTemplate ResourceSlice DeviceTaintRule"
}

t_extended_resource_name() {
  "${K[@]}" apply -f - <<EOF || return 1
apiVersion: resource.k8s.io/v1
kind: DeviceClass
metadata: {name: smoke-ext.example.com}
spec:
  extendedResourceName: example.com/smoke-ext
  selectors:
    - cel: {expression: 'device.driver == "smoke-ext.example.com"'}
EOF
  local got; got=$("${K[@]}" get deviceclass smoke-ext.example.com -o jsonpath='{.spec.extendedResourceName}')
  [ "$got" = example.com/smoke-ext ] || { echo "spec.extendedResourceName was dropped (got '$got'): DRAExtendedResource off?"; return 1; }
  echo "spec.extendedResourceName kept: $got"
}

t_busybox_pod() {
  "${K[@]}" apply -f - <<EOF || return 1
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: $NS}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: c
      image: $BUSYBOX_IMAGE
      imagePullPolicy: Never
      command: [sh, -c, 'echo hello from the smoke pod; exec sleep 3600']
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: $NS, labels: {app: smoke-web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: httpd
      image: $BUSYBOX_IMAGE
      imagePullPolicy: Never
      command: [sh, -c, 'mkdir -p /tmp/www && echo smoke-web-ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www']
      ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: $NS}
spec:
  selector: {app: smoke-web}
  ports: [{port: 80, targetPort: 8080}]
EOF
  wait_pod client && wait_pod web || return 1
  until_ok 30 sh -c "'${K[0]}' --kubeconfig '$KCFG' -n $NS logs client | grep -q 'hello from the smoke pod'" || { echo "log not readable"; return 1; }
  echo "pods Running (IPs $("${K[@]}" -n "$NS" get pods -o jsonpath='{.items[*].status.podIP}')), log: $("${K[@]}" -n "$NS" logs client)"
}

t_dns() {
  pod_running client || { echo "needs pod client (busybox-pod)"; return 1; }
  until_ok 30 "${K[@]}" -n "$NS" exec client -- nslookup kubernetes.default.svc.cluster.local || { cat "$OUT/last"; return 1; }
  cat "$OUT/last"
  grep -q "$(cidr_host "$SERVICE_CIDR" 1)" "$OUT/last" || { echo "wrong answer"; return 1; }
  until_ok 30 "${K[@]}" -n "$NS" exec client -- nslookup "web.$NS.svc.cluster.local" || { cat "$OUT/last"; return 1; }
  echo "kubernetes.default.svc.cluster.local -> $(cidr_host "$SERVICE_CIDR" 1), web.$NS.svc resolves"
}

t_apiserver_from_pod() {
  pod_running client || { echo "needs pod client (busybox-pod)"; return 1; }
  # TCP through the kubernetes Service to the apiserver: a plain-HTTP request gets Go's
  # "HTTP request to an HTTPS server" answer. (busybox's own TLS client cannot complete a
  # handshake with this apiserver, so TLS is checked with Python below.)
  # shellcheck disable=SC2016  # expanded inside the pod
  "${K[@]}" -n "$NS" exec client -- sh -c \
    'printf "GET / HTTP/1.0\r\n\r\n" | timeout 5 nc "$KUBERNETES_SERVICE_HOST" "$KUBERNETES_SERVICE_PORT"' > "$OUT/plain" 2>&1
  grep -q 'HTTP request to an HTTPS server' "$OUT/plain" || { cat "$OUT/plain"; return 1; }
  echo "busybox: \$KUBERNETES_SERVICE_HOST:\$KUBERNETES_SERVICE_PORT reaches the apiserver"
  # What the operator does: the Python kubernetes client's in-cluster config (verifies TLS
  # with the ServiceAccount CA against KUBERNETES_SERVICE_HOST).
  image_loaded "$AGENTS_IMAGE" || { echo "(TLS not checked: $AGENTS_IMAGE is not loaded)"; return 0; }
  "${K[@]}" apply -f - <<EOF || return 1
apiVersion: v1
kind: Pod
metadata: {name: incluster, namespace: $NS}
spec:
  restartPolicy: Never
  containers:
    - name: py
      image: $AGENTS_IMAGE
      imagePullPolicy: Never
      command: [python, -c]
      args:
        - |
          from kubernetes import client, config
          config.load_incluster_config()
          print("in-cluster:", client.Configuration.get_default_copy().host, client.VersionApi().get_code().git_version)
          groups = [g.name for g in client.ApisApi().get_api_versions().groups]
          assert "resource.k8s.io" in groups, groups
          print("resource.k8s.io served; token accepted")
EOF
  local deadline=$(( $(date +%s) + 120 )) phase=""
  while [ "$(date +%s)" -lt "$deadline" ]; do
    phase=$("${K[@]}" -n "$NS" get pod incluster -o jsonpath='{.status.phase}')
    case "$phase" in Succeeded|Failed) break ;; esac
    sleep 1
  done
  "${K[@]}" -n "$NS" logs incluster
  [ "$phase" = Succeeded ] && "${K[@]}" -n "$NS" logs incluster | grep -q "in-cluster: https://.* v$K8S_VERSION"
}

t_service_from_pod() {
  if ! pod_running client || ! pod_running web; then echo "needs pods client and web (busybox-pod)"; return 1; fi
  # (busybox-static's wget crashes with -T; timeout(1) bounds it instead.)
  until_ok 30 "${K[@]}" -n "$NS" exec client -- timeout 5 wget -qO- http://web/ || { cat "$OUT/last"; return 1; }
  grep -q smoke-web-ok "$OUT/last" || return 1
  # Hairpin: a pod reaching itself through its own Service.
  until_ok 30 "${K[@]}" -n "$NS" exec web -- timeout 5 wget -qO- "http://web.$NS.svc.cluster.local/" || { echo "hairpin failed"; cat "$OUT/last"; return 1; }
  echo "client -> Service web -> pod web, and web -> its own Service (hairpin)"
}

t_service_from_host() {
  local ip; ip=$("${K[@]}" -n "$NS" get svc web -o jsonpath='{.spec.clusterIP}') || return 1
  ip route get "$ip" | grep -q "dev $BRIDGE" || { echo "ClusterIP $ip is not routed to $BRIDGE: $(ip route get "$ip")"; return 1; }
  until_ok 30 curl -fsS --max-time 3 "http://$ip/" || { cat "$OUT/last"; return 1; }
  grep -q smoke-web-ok "$OUT/last" || return 1
  echo "host -> ClusterIP $ip:80 -> pod web"
}

t_isolation() {
  # Static checks only (no packet is sent anywhere): our FORWARD chain is in place and global
  # forwarding stays off.
  iptables -w -C FORWARD -j "$FW_CHAIN" || { echo "FORWARD -j $FW_CHAIN missing"; return 1; }
  iptables -w -S "$FW_CHAIN"
  [ "$(sysctl -n net.ipv4.ip_forward)" = 0 ] || { echo "net.ipv4.ip_forward is on"; return 1; }
  [ "$(sysctl -n "net.ipv4.conf.$BRIDGE.forwarding")" = 1 ] || return 1
  if iptables-save -t nat | grep -E '(-o|--out-interface) eth0' | grep -q MASQUERADE; then echo "masquerade to eth0 found"; return 1; fi
  if ss -Hltn | awk '{print $4}' | grep -vE '^(127\.|\[::1\]|\[::ffff:127\.|'"${BRIDGE_IP//./\\.}"':)' | grep -q .; then
    echo "note: other listeners on this machine (not ours?):"; ss -Hltnp | grep -vE ' (127\.|\[::1\])'
  fi
  echo "FORWARD -> $FW_CHAIN, ip_forward=0, forwarding only on $BRIDGE, no masquerade to eth0"
}

t_crd_validation() {
  "${K[@]}" apply -f - <<'EOF' || return 1
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: smokes.smoke.example.com}
spec:
  group: smoke.example.com
  scope: Namespaced
  names: {plural: smokes, singular: smoke, kind: Smoke}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              x-kubernetes-validations:
                - rule: self.min <= self.max
                  message: min must not exceed max
              properties:
                min: {type: integer}
                max: {type: integer}
EOF
  until_ok 30 "${K[@]}" wait --for=condition=Established crd/smokes.smoke.example.com --timeout=5s || return 1
  local good='{"apiVersion":"smoke.example.com/v1","kind":"Smoke","metadata":{"name":"good"},"spec":{"min":1,"max":2}}'
  local bad='{"apiVersion":"smoke.example.com/v1","kind":"Smoke","metadata":{"name":"bad"},"spec":{"min":3,"max":2}}'
  until_ok 30 "${K[@]}" -n "$NS" create -f - <<<"$good" || { cat "$OUT/last"; return 1; }
  if "${K[@]}" -n "$NS" create -f - <<<"$bad" > "$OUT/bad" 2>&1; then echo "the bad object was accepted"; return 1; fi
  grep -q 'min must not exceed max' "$OUT/bad" || { cat "$OUT/bad"; return 1; }
  echo "rejected: $(grep -o 'min must not exceed max' "$OUT/bad" | head -n1)"
}

t_dra_cdi() {
  image_loaded "$AGENTS_IMAGE" || { echo "needs $AGENTS_IMAGE (the fake driver runs in it)"; return 77; }
  # The device's CDI spec, a ResourceSlice for it, a DeviceClass and a claim; the fake driver
  # (smoke/fake_dra_driver.py) answers the kubelet's NodePrepareResources with the CDI ID.
  cat > "$CDI_SPEC" <<EOF
{"cdiVersion": "0.6.0", "kind": "$DRIVER/device",
 "devices": [{"name": "dev0", "containerEdits": {"env": ["SMOKE_DEVICE=dev0", "SMOKE_CDI=yes"]}}]}
EOF
  "${K[@]}" -n "$NS" create configmap fake-dra-driver --from-file="$HERE/smoke/fake_dra_driver.py" --dry-run=client -o yaml | "${K[@]}" apply -f - || return 1
  "${K[@]}" apply -f - <<EOF || return 1
apiVersion: v1
kind: Pod
metadata: {name: fake-dra-driver, namespace: $NS}
spec:
  nodeName: $NODE_NAME
  terminationGracePeriodSeconds: 2
  containers:
    - name: driver
      image: $AGENTS_IMAGE
      imagePullPolicy: Never
      command: [python, /driver/fake_dra_driver.py]
      env: [{name: DRIVER, value: $DRIVER}]
      securityContext: {runAsUser: 0, runAsGroup: 0}
      volumeMounts:
        - {name: code, mountPath: /driver}
        - {name: registry, mountPath: /var/lib/kubelet/plugins_registry}
        - {name: plugins, mountPath: /var/lib/kubelet/plugins}
  volumes:
    - {name: code, configMap: {name: fake-dra-driver}}
    - {name: registry, hostPath: {path: /var/lib/kubelet/plugins_registry, type: Directory}}
    - {name: plugins, hostPath: {path: /var/lib/kubelet/plugins, type: Directory}}
---
apiVersion: resource.k8s.io/v1
kind: ResourceSlice
metadata: {name: smoke-slice}
spec:
  driver: $DRIVER
  nodeName: $NODE_NAME
  pool: {name: smoke, generation: 1, resourceSliceCount: 1}
  devices:
    - name: dev0
      attributes:
        model: {string: smoke}
---
apiVersion: resource.k8s.io/v1
kind: DeviceClass
metadata: {name: $DRIVER}
spec:
  selectors:
    - cel: {expression: 'device.driver == "$DRIVER"'}
---
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: smoke-claim, namespace: $NS}
spec:
  devices:
    requests:
      - name: dev
        exactly: {deviceClassName: $DRIVER}
EOF
  wait_pod fake-dra-driver 90 || return 1
  until_ok 60 sh -c "'${K[0]}' --kubeconfig '$KCFG' -n $NS logs fake-dra-driver | grep -q 'registered=True'" \
    || { "${K[@]}" -n "$NS" logs fake-dra-driver; echo "driver did not register"; return 1; }
  "${K[@]}" apply -f - <<EOF || return 1
apiVersion: v1
kind: Pod
metadata: {name: dra-consumer, namespace: $NS}
spec:
  terminationGracePeriodSeconds: 1
  resourceClaims: [{name: dev, resourceClaimName: smoke-claim}]
  containers:
    - name: c
      image: $BUSYBOX_IMAGE
      imagePullPolicy: Never
      command: [sh, -c, 'env | grep ^SMOKE_; exec sleep 3600']
      resources:
        claims: [{name: dev}]
EOF
  wait_pod dra-consumer 90 || { "${K[@]}" -n "$NS" logs fake-dra-driver; return 1; }
  until_ok 30 sh -c "'${K[0]}' --kubeconfig '$KCFG' -n $NS logs dra-consumer | grep -q SMOKE_DEVICE=dev0" || { cat "$OUT/last"; return 1; }
  local msg
  msg="claim allocated ($("${K[@]}" -n "$NS" get resourceclaim smoke-claim -o jsonpath='{.status.allocation.devices.results[0].device}')), container env: $("${K[@]}" -n "$NS" logs dra-consumer | tr '\n' ' ')"
  # The consumer goes first: its claim is unprepared by the driver, which must still run.
  dra_teardown || return 1
  echo "$msg"
}
dra_teardown() {
  "${K[@]}" -n "$NS" delete pod dra-consumer --ignore-not-found --wait=true --timeout=60s || return 1
  "${K[@]}" -n "$NS" logs fake-dra-driver 2>/dev/null | grep -q '^unprepare ' || { echo "the driver saw no NodeUnprepareResources"; return 1; }
  "${K[@]}" -n "$NS" delete pod fake-dra-driver --ignore-not-found --wait=true --timeout=60s
}

# ready_since TIME: node Ready and its Lease renewed after TIME (RFC 3339, UTC), i.e. by the
# new kubelet.
ready_since() {
  local renew
  renew=$("${K[@]}" -n kube-node-lease get lease "$NODE_NAME" -o jsonpath='{.spec.renewTime}')
  [ "$("${K[@]}" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ] \
    && [[ "$renew" > "$1" ]]
}
t_kubelet_restart() {
  pod_running client || { echo "needs pod client (busybox-pod)"; return 1; }
  local cid before
  cid=$("${K[@]}" -n "$NS" get pod client -o jsonpath='{.status.containerStatuses[0].containerID}')
  "$HERE/restart.sh" kubelet || return 1
  # The old kubelet is gone now: a Lease renewal after this moment is the new one's.
  before=$(date -u +%FT%TZ)
  # Ready again, with a heartbeat from the new kubelet.
  until_ok 90 ready_since "$before" || { "${K[@]}" get node "$NODE_NAME" -o wide; return 1; }
  until_ok 30 curl -fsS --max-time 2 "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz" || return 1
  [ "$("${K[@]}" -n "$NS" get pod client -o jsonpath='{.status.containerStatuses[0].containerID}')" = "$cid" ] \
    || { echo "the pod's container was replaced"; return 1; }
  pod_running client || return 1
  echo "kubelet restarted; node Ready (lease renewed after $before), pod client kept its container"
}

cleanup() {
  [ "${QPU_K8S_SMOKE_KEEP:-0}" = 1 ] && { log "QPU_K8S_SMOKE_KEEP=1: objects kept (namespace $NS)"; return; }
  dra_teardown >/dev/null 2>&1 || true
  "${K[@]}" delete namespace "$NS" --wait=true --timeout=60s >/dev/null 2>&1 || warn "namespace $NS not deleted in time"
  "${K[@]}" delete crd smokes.smoke.example.com --ignore-not-found >/dev/null 2>&1 || true
  "${K[@]}" delete deviceclass smoke-ext.example.com "$DRIVER" --ignore-not-found >/dev/null 2>&1 || true
  "${K[@]}" delete resourceslice smoke-slice --ignore-not-found >/dev/null 2>&1 || true
  rm -f "$CDI_SPEC"
  rm -rf "$OUT"
}

SELECTED=("$@")
T0=$(date +%s)
BRIDGE_IP=$(cidr_host "$POD_CIDR" 1)
"${K[@]}" delete namespace "$NS" --ignore-not-found --wait=true --timeout=60s >/dev/null 2>&1 || true
"${K[@]}" create namespace "$NS" >/dev/null || die "cannot create namespace $NS"
until_ok 30 "${K[@]}" -n "$NS" get serviceaccount default || die "no default ServiceAccount in $NS"
trap cleanup EXIT

check node-ready t_node_ready
check dra-api t_dra_api
check extended-resource-name t_extended_resource_name
check busybox-pod t_busybox_pod
check dns t_dns
check apiserver-from-pod t_apiserver_from_pod
check service-from-pod t_service_from_pod
check service-from-host t_service_from_host
check isolation t_isolation
check crd-validation t_crd_validation
check dra-cdi t_dra_cdi
check kubelet-restart t_kubelet_restart

log "smoke done in $(( $(date +%s) - T0 ))s${FAILED:+; failed: ${FAILED[*]}}"
echo "$PASS passed, $FAIL failed, $SKIP skipped"
[ "$FAIL" -eq 0 ]
