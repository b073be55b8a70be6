#!/usr/bin/env bash
# Start a one-node Kubernetes cluster from what build.sh built: etcd, containerd (+runc),
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and CoreDNS.
# Host listeners are on 127.0.0.1 only; pods live on the isolated bridge qpu-br0 ($POD_CIDR)
# and reach the apiserver, Services and DNS, but nothing outside this machine. Every run
# starts from empty state in $QPU_K8S_RUN_DIR. On success the last line on stdout is
#   export KUBECONFIG=<run dir>/kubeconfig
# Stop it with down.sh.
#
# Env: QPU_K8S_CACHE, QPU_K8S_RUN_DIR (default /var/lib/qpu-k8s/local-cluster),
#      QPU_K8S_*_PORT and QPU_K8S_{POD,SERVICE}_CIDR (lib.sh), QPU_K8S_UP_TIMEOUT (seconds
#      per wait, default 180), QPU_K8S_KEEP_ON_FAILURE=1 (leave a failed cluster running),
#      QPU_K8S_IMAGES=all|base (base: skip importing the two project images),
#      QPU_K8S_EXTRA_FEATURE_GATES, QPU_K8S_RUNTIME_CONFIG (extra apiserver --runtime-config).
set -Eeuo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LC_TAG=up
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
TIMEOUT="${QPU_K8S_UP_TIMEOUT:-180}"
T0=$(date +%s)

need_root
cluster_bins_ok || die "binaries missing under $LC_CACHE: run $HERE/build.sh first"
for t in pause busybox coredns; do
  [ -s "$IMAGES_DIR/$t.tar" ] || die "$IMAGES_DIR/$t.tar missing: run $HERE/build.sh (or images.sh) first"
done
ensure_pkgs "${RUNTIME_PKGS[@]}"
for f in bridge host-local loopback; do
  [ -x "$CNI_BIN_DIR/$f" ] || die "CNI plugin $CNI_BIN_DIR/$f missing (Debian package containernetworking-plugins)"
done

PKI="$RUN_DIR/pki"; LOGS="$RUN_DIR/logs"; PIDS="$RUN_DIR/pids"; STATE="$RUN_DIR/state"
CTRD="$RUN_DIR/containerd"; CTRD_SOCK="$CTRD/containerd.sock"
KCFG="$RUN_DIR/kubeconfig"
KUBECTL=("$K8S_BIN/kubectl" --kubeconfig "$KCFG")
CTR=("$CONTAINERD_BIN/ctr" --address "$CTRD_SOCK" --namespace k8s.io)
COMPONENTS=(etcd containerd apiserver-forward kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
BRIDGE_IP=$(cidr_host "$POD_CIDR" 1)
POD_PREFIX=${POD_CIDR#*/}
API_SVC_IP=$(cidr_host "$SERVICE_CIDR" 1)
DNS_SVC_IP=$(cidr_host "$SERVICE_CIDR" 10)

pid_alive() { local f="$PIDS/$1.pid"; [ -f "$f" ] && pid_running "$(cat "$f")"; }

STARTED=0
on_exit() {
  local rc=$? c
  [ "$rc" -eq 0 ] && return 0
  [ "$STARTED" = 1 ] || exit "$rc"
  for c in "${COMPONENTS[@]}"; do
    [ -s "$LOGS/$c.log" ] || continue
    printf -- '----- last lines of %s -----\n' "$LOGS/$c.log" >&2
    tail -n 12 "$LOGS/$c.log" >&2
  done
  if [ "${QPU_K8S_KEEP_ON_FAILURE:-0}" = 1 ]; then
    warn "up.sh failed; QPU_K8S_KEEP_ON_FAILURE=1: leaving it running (logs in $LOGS, KUBECONFIG=$KCFG); run down.sh when done"
  else
    log "up.sh failed: running down.sh (QPU_K8S_KEEP_ON_FAILURE=1 keeps the cluster for debugging)"
    "$HERE/down.sh" >&2 || true
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'printf "\033[1;31m[%s up] ERROR:\033[0m line %s: %s\n" "$(_ts)" "$LINENO" "$BASH_COMMAND" >&2' ERR

# ------------------------------------------------------------ refuse a second cluster
running=()
for c in "${COMPONENTS[@]}"; do if pid_alive "$c"; then running+=("$c"); fi; done
if [ ${#running[@]} -gt 0 ]; then
  if [ ${#running[@]} -eq ${#COMPONENTS[@]} ] && "${KUBECTL[@]}" get --raw /readyz >/dev/null 2>&1; then
    log "already running (run down.sh first for a fresh cluster)"
    echo "export KUBECONFIG=$KCFG"; exit 0
  fi
  die "partly running (${running[*]}): run $HERE/down.sh first"
fi
if grep -qsE " ($RUN_DIR|$KUBELET_ROOT)(/| )" /proc/self/mountinfo; then die "mounts left below $RUN_DIR or $KUBELET_ROOT: run $HERE/down.sh first"; fi
if ip link show "$BRIDGE" >/dev/null 2>&1; then die "bridge $BRIDGE exists (another cluster, or a leftover): run $HERE/down.sh first"; fi
if ip -4 route show | grep -qE "^($POD_CIDR|$SERVICE_CIDR) "; then die "a route for $POD_CIDR or $SERVICE_CIDR exists already: they collide with this machine's network (set QPU_K8S_POD_CIDR / QPU_K8S_SERVICE_CIDR)"; fi
for p in "$APISERVER_PORT" "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" "$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT" "$CM_PORT" "$SCHED_PORT" "$PROXY_METRICS_PORT" "$PROXY_HEALTHZ_PORT"; do
  if [ -n "$(ss -Hltn "sport = :$p")" ]; then
    die "TCP port $p is in use ($(ss -Hltnp "sport = :$p" | awk '{print $4, $6}' | head -n1)); free it or override it (QPU_K8S_*_PORT, see lib.sh)"
  fi
done

# ------------------------------------------------------------ fresh state
log "run dir $RUN_DIR (fresh), kubelet root $KUBELET_ROOT, Kubernetes v$K8S_VERSION"
STARTED=1
rm -rf "$RUN_DIR"
mkdir -p "$PKI" "$LOGS" "$PIDS" "$STATE" "$RUN_DIR/etcd" "$CTRD" "$RUN_DIR/cni/net.d" "$RUN_DIR/cni/ipam"
chmod 700 "$PKI" "$RUN_DIR/etcd"
# Nothing is mounted below the kubelet root (checked above): its state goes too (pod and
# resource-manager checkpoints of an earlier run would confuse the new kubelet).
rm -rf "${KUBELET_ROOT:?}"
# DRA and device-plugin directories exist before any driver starts.
mkdir -p "$KUBELET_ROOT/plugins_registry" "$KUBELET_ROOT/plugins" "$KUBELET_ROOT/device-plugins" /var/run/cdi

# Kernel settings that this run may change (here or in the kubelet/kube-proxy): their values
# now, so that down.sh can put them back.
SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.forwarding net.ipv4.conf.all.route_localnet
         net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
         net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
         net.netfilter.nf_conntrack_tcp_timeout_close_wait
         vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
         kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
for k in "${SYSCTLS[@]}"; do
  v=$(sysctl -n "$k" 2>/dev/null) && printf '%s=%s\n' "$k" "$v"
done > "$STATE/sysctl.before"
{ iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; } > "$STATE/iptables.before" || true

# ------------------------------------------------------------ PKI
log "certificates (openssl, ECDSA P-256 keys)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 -subj "/CN=qpu-local-cluster-ca" \
  -keyout "$PKI/ca.key" -out "$PKI/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
cp "$PKI/ca.crt" "$PKI/front-proxy-ca.crt"; cp "$PKI/ca.key" "$PKI/front-proxy-ca.key"
sign() {  # NAME SUBJECT EKU [SAN]
  local name=$1 subj=$2 eku=$3 san=${4:-}
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$subj" \
    -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    if [ -n "$san" ]; then echo "subjectAltName=$san"; fi
  } > "$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}
sign apiserver "/CN=kube-apiserver" serverAuth \
  "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:$BRIDGE_IP,IP:$API_SVC_IP"
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
sign front-proxy-client "/CN=front-proxy-client" clientAuth
sign admin "/O=system:masters/CN=kubernetes-admin" clientAuth
sign controller-manager "/CN=system:kube-controller-manager" clientAuth
sign scheduler "/CN=system:kube-scheduler" clientAuth
sign kube-proxy "/CN=system:kube-proxy" clientAuth
sign kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
sign kubelet-serving "/CN=$NODE_NAME" serverAuth "DNS:localhost,IP:127.0.0.1"
openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null
openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null

b64() { base64 -w0 < "$1"; }
kubeconfig() {  # OUT CERTNAME USER
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: qpu-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $3
  user:
    client-certificate-data: $(b64 "$PKI/$2.crt")
    client-key-data: $(b64 "$PKI/$2.key")
contexts:
- name: qpu-local
  context: {cluster: qpu-local, user: $3}
current-context: qpu-local
EOF
  chmod 600 "$1"
}
kubeconfig "$KCFG" admin kubernetes-admin
kubeconfig "$RUN_DIR/controller-manager.kubeconfig" controller-manager system:kube-controller-manager
kubeconfig "$RUN_DIR/scheduler.kubeconfig" scheduler system:kube-scheduler
kubeconfig "$RUN_DIR/kube-proxy.kubeconfig" kube-proxy system:kube-proxy
kubeconfig "$RUN_DIR/kubelet.kubeconfig" kubelet-client "system:node:$NODE_NAME"

# ------------------------------------------------------------ helpers
# start NAME CMD...: a daemon in its own session (so its process group is its own),
# output in $LOGS/NAME.log, PID in $PIDS/NAME.pid.
start() {
  local name=$1; shift
  printf '%s\0' "$@" > "$STATE/$name.argv"   # restart.sh starts it again from this
  setsid "$@" </dev/null >"$LOGS/$name.log" 2>&1 &
  echo "$!" > "$PIDS/$name.pid"
  log "started $name (pid $!, log $LOGS/$name.log)"
}
# wait_for WHAT CMD...: poll CMD until it succeeds; fail after TIMEOUT or when a started
# component has died (its log tail is shown by on_exit).
wait_for() {
  local what=$1; shift
  local deadline=$(( $(date +%s) + TIMEOUT )) c
  until "$@" >/dev/null 2>&1; do
    for c in "${COMPONENTS[@]}"; do
      if [ -f "$PIDS/$c.pid" ] && ! pid_alive "$c"; then die "$c exited while waiting for $what (log: $LOGS/$c.log)"; fi
    done
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${TIMEOUT}s waiting for $what"
    sleep 0.5
  done
  log "$what: ok ($(( $(date +%s) - T0 ))s)"
}

# ------------------------------------------------------------ pod network (host side)
# The bridge is ours: the CNI bridge plugin reuses it (isGateway=false, so the plugin neither
# assigns it an address nor turns on net.ipv4.ip_forward). Forwarding is enabled on this
# interface only: packets that arrive on the bridge may be routed (pod -> ClusterIP -> pod);
# nothing arriving on eth0 is. The FORWARD chain drops whatever would cross between the bridge
# and any other interface; pods may still talk to the host itself (INPUT), which is how they
# reach the apiserver.
log "network: bridge $BRIDGE $BRIDGE_IP/$POD_PREFIX, pods $POD_CIDR, services $SERVICE_CIDR"
ip link add "$BRIDGE" type bridge
echo "$BRIDGE" > "$STATE/bridge"
ip addr add "$BRIDGE_IP/$POD_PREFIX" dev "$BRIDGE"
ip link set "$BRIDGE" up
sysctl -qw "net.ipv4.conf.$BRIDGE.forwarding=1"
sysctl -qw "net.ipv6.conf.$BRIDGE.disable_ipv6=1" 2>/dev/null || true
# ClusterIPs are routed to the bridge with the bridge's address as source: kube-proxy's
# OUTPUT DNAT then picks the endpoint, and a ClusterIP without endpoints can never fall
# through to the default route.
ip route add "$SERVICE_CIDR" dev "$BRIDGE" src "$BRIDGE_IP"
# Bridged pod<->pod traffic must pass iptables so replies of Service connections are un-NATed.
if [ "$(sysctl -n net.bridge.bridge-nf-call-iptables 2>/dev/null || echo missing)" != 1 ]; then
  modprobe br_netfilter 2>/dev/null || true
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 || die "cannot set net.bridge.bridge-nf-call-iptables=1 (br_netfilter missing?)"
fi
iptables -w -N "$FW_CHAIN"
iptables -w -A "$FW_CHAIN" -i "$BRIDGE" -o "$BRIDGE" -j RETURN
iptables -w -A "$FW_CHAIN" -i "$BRIDGE" -j DROP
iptables -w -A "$FW_CHAIN" -o "$BRIDGE" -j DROP
iptables -w -I FORWARD 1 -j "$FW_CHAIN"
# Pods reach the apiserver at $BRIDGE_IP (the kubernetes Service's endpoint) through a
# forwarder to 127.0.0.1; the apiserver itself listens on 127.0.0.1 only.
start apiserver-forward socat "TCP-LISTEN:$APISERVER_PORT,bind=$BRIDGE_IP,reuseaddr,fork" "TCP:127.0.0.1:$APISERVER_PORT"

# ------------------------------------------------------------ etcd
start etcd "$ETCD_BIN/etcd" --name qpu-local --data-dir "$RUN_DIR/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "qpu-local=http://127.0.0.1:$ETCD_PEER_PORT" --initial-cluster-state new \
  --snapshot-count 10000 --quota-backend-bytes 2147483648 --unsafe-no-fsync
etcd_healthy() { exec 3<>"/dev/tcp/127.0.0.1/$ETCD_CLIENT_PORT" && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 && grep -q '"health":"true"' <&3; }

# ------------------------------------------------------------ containerd
mkdir -p "$CTRD/certs.d"
# Every registry resolves to a closed loopback port: a missing image fails at once.
for reg in _default qpu.local docker.io registry-1.docker.io registry.k8s.io k8s.gcr.io gcr.io quay.io ghcr.io; do
  mkdir -p "$CTRD/certs.d/$reg"
  printf 'server = "http://127.0.0.1:9"\n[host."http://127.0.0.1:9"]\n  capabilities = ["pull", "resolve"]\n' > "$CTRD/certs.d/$reg/hosts.toml"
done
cat > "$RUN_DIR/cni/net.d/10-qpu-local.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "qpu-local",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RUN_DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$BRIDGE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0", "gw": "$BRIDGE_IP"}]
      }
    }
  ]
}
EOF
cat > "$CTRD/config.toml" <<EOF
version = 3
root = "$CTRD/root"
state = "$CTRD/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins.'io.containerd.internal.v1.opt']
  path = "$CTRD/opt"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE_IMAGE"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "$CTRD/certs.d"
[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  # The VM does not let containerd lower oom_score_adj below its own.
  restrict_oom_score_adj = true
  enable_cdi = true
  cdi_spec_dirs = ["/etc/cdi", "/var/run/cdi"]
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$RUNC_BIN/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$CNI_BIN_DIR"]
    conf_dir = "$RUN_DIR/cni/net.d"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
# The shim is found on PATH.
start containerd env PATH="$CONTAINERD_BIN:$RUNC_BIN:$PATH" "$CONTAINERD_BIN/containerd" --config "$CTRD/config.toml"
wait_for "etcd /health" etcd_healthy
wait_for "containerd" "${CTR[@]}" version

# ------------------------------------------------------------ control plane
FRONT_PROXY=(--requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client
             --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group
             --requestheader-extra-headers-prefix=X-Remote-Extra-
             --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key")
RUNTIME_CONFIG=()
if [ -n "${QPU_K8S_RUNTIME_CONFIG:-}" ]; then RUNTIME_CONFIG=(--runtime-config="$QPU_K8S_RUNTIME_CONFIG"); fi
start kube-apiserver "$K8S_BIN/kube-apiserver" \
  --bind-address=127.0.0.1 --secure-port="$APISERVER_PORT" --advertise-address="$BRIDGE_IP" \
  --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP,Hostname \
  --service-account-issuer="https://kubernetes.default.svc.cluster.local" \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  "${FRONT_PROXY[@]}" "${RUNTIME_CONFIG[@]}" \
  --feature-gates="$FEATURE_GATES" --allow-privileged=true --profiling=false --v=1

# Images: the small ones now (the kubelet needs pause, CoreDNS its own); the project images
# (1.5 GB) in the background while the rest starts; up.sh waits for them at the end.
import_images() {  # NAME...
  local t
  for t in "$@"; do
    "${CTR[@]}" images import "$IMAGES_DIR/$t.tar" >>"$LOGS/image-import.log" 2>&1 \
      || { tail -n 20 "$LOGS/image-import.log" >&2; echo "ctr images import $t.tar failed" >&2; return 1; }
  done
}
TI=$(date +%s)
import_images pause busybox coredns || die "image import failed (log: $LOGS/image-import.log)"
grep -qxF "$PAUSE_IMAGE" <("${CTR[@]}" images ls -q) || die "$PAUSE_IMAGE missing after the import"
PROJECT_IMAGES=()
if [ "${QPU_K8S_IMAGES:-all}" = all ]; then
  for t in agents emulator; do
    if [ -s "$IMAGES_DIR/$t.tar" ]; then PROJECT_IMAGES+=("$t"); else warn "$IMAGES_DIR/$t.tar not built: not loaded"; fi
  done
fi
IMPORT_PID=""
if [ ${#PROJECT_IMAGES[@]} -gt 0 ]; then
  import_images "${PROJECT_IMAGES[@]}" &
  IMPORT_PID=$!
fi

wait_for "kube-apiserver /readyz" "${KUBECTL[@]}" get --raw /readyz

start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --bind-address=127.0.0.1 --secure-port="$CM_PORT" \
  --kubeconfig="$RUN_DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$RUN_DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$RUN_DIR/controller-manager.kubeconfig" \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" --cluster-cidr="$POD_CIDR" --allocate-node-cidrs=true \
  --node-cidr-mask-size="$POD_PREFIX" \
  --use-service-account-credentials=true --leader-elect=false --profiling=false \
  --feature-gates="$FEATURE_GATES" --v=1

start kube-scheduler "$K8S_BIN/kube-scheduler" \
  --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
  --kubeconfig="$RUN_DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig="$RUN_DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig="$RUN_DIR/scheduler.kubeconfig" \
  --leader-elect=false --profiling=false --feature-gates="$FEATURE_GATES" --v=1

# ------------------------------------------------------------ kubelet
gates_yaml() { tr ',' '\n' <<<"$FEATURE_GATES" | sed -E 's/^([^=]+)=(.*)$/  \1: \2/'; }
cat > "$RUN_DIR/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 host: 1.35+ refuses to start without this.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CTRD_SOCK
imageServiceEndpoint: unix://$CTRD_SOCK
runtimeRequestTimeout: 5m
address: 127.0.0.1
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: [$DNS_SVC_IP]
# No host resolv.conf: pods get cluster DNS only (dnsPolicy Default gets no nameserver).
resolvConf: ""
failSwapOn: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
featureGates:
$(gates_yaml)
EOF
start kubelet "$K8S_BIN/kubelet" --config="$RUN_DIR/kubelet-config.yaml" --kubeconfig="$RUN_DIR/kubelet.kubeconfig" \
  --root-dir="$KUBELET_ROOT" --hostname-override="$NODE_NAME" --v=1

# ------------------------------------------------------------ kube-proxy
cat > "$RUN_DIR/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $RUN_DIR/kube-proxy.kubeconfig
hostnameOverride: "$NODE_NAME"
mode: iptables
clusterCIDR: $POD_CIDR
detectLocalMode: ClusterCIDR
bindAddress: 127.0.0.1
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
# NodePorts answer on the bridge address only (never on eth0), and not on 127.0.0.1 (that
# would need route_localnet).
nodePortAddresses: ["$BRIDGE_IP/32"]
iptables:
  localhostNodePorts: false
  masqueradeAll: false
# 0: leave the host's conntrack settings alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
featureGates:
$(gates_yaml)
EOF
start kube-proxy "$K8S_BIN/kube-proxy" --config="$RUN_DIR/kube-proxy-config.yaml" --v=1

wait_for "node $NODE_NAME registered" "${KUBECTL[@]}" get node "$NODE_NAME"
wait_for "node $NODE_NAME Ready" "${KUBECTL[@]}" wait --for=condition=Ready "node/$NODE_NAME" --timeout=5s
wait_for "default ServiceAccount" "${KUBECTL[@]}" -n default get serviceaccount default

# ------------------------------------------------------------ CoreDNS
sed -e "s|@DNS_SVC_IP@|$DNS_SVC_IP|g" -e "s|@COREDNS_IMAGE@|$COREDNS_IMAGE|g" "$HERE/manifests/coredns.yaml" \
  | "${KUBECTL[@]}" apply -f - >"$LOGS/coredns-apply.log" 2>&1 || { cat "$LOGS/coredns-apply.log" >&2; die "kubectl apply coredns.yaml failed"; }
coredns_ready() { [ "$("${KUBECTL[@]}" -n kube-system get deployment coredns -o jsonpath='{.status.readyReplicas}')" = 1 ]; }
wait_for "CoreDNS ready" coredns_ready

if [ -n "$IMPORT_PID" ]; then
  wait "$IMPORT_PID" || die "importing ${PROJECT_IMAGES[*]} failed (log: $LOGS/image-import.log)"
fi
log "images in containerd ($(( $(date +%s) - TI ))s): $("${CTR[@]}" images ls -q | grep -v '^sha256:' | tr '\n' ' ')"

for k in "${SYSCTLS[@]}"; do
  before=$(sed -n "s/^$k=//p" "$STATE/sysctl.before")
  now=$(sysctl -n "$k" 2>/dev/null || true)
  if [ "$before" != "$now" ]; then log "sysctl $k: $before -> $now (down.sh restores it)"; fi
done
log "cluster up in $(( $(date +%s) - T0 ))s: $("${KUBECTL[@]}" version -o json | jq -r .serverVersion.gitVersion), node $NODE_NAME Ready, DNS $DNS_SVC_IP"
echo "export KUBECONFIG=$KCFG"
