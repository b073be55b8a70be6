# shellcheck shell=bash
# shellcheck disable=SC2034  # the settings are used by the scripts that source this file
# Shared settings and helpers of hack/local-cluster/*.sh. Source it; do not run it.
#
# Everything built lands under $QPU_K8S_CACHE/local-cluster, one directory per component and
# version, each with a .build-ok marker; the Go module and build caches are shared.

# ------------------------------------------------------------------ versions
# The env overrides exist for trying another release (e.g. QPU_K8S_VERSION=1.36.3, which then
# needs its own FEATURE_GATES: build.sh checks them against that release).
K8S_VERSION="${QPU_K8S_VERSION:-1.37.2}"                 # k8s.io/kubernetes; staging v0.<minor>.<patch>
ETCD_VERSION="${QPU_K8S_ETCD_VERSION:-3.6.17}"           # go.etcd.io/etcd/server/v3
CONTAINERD_VERSION="${QPU_K8S_CONTAINERD_VERSION:-2.3.7}" # github.com/containerd/containerd/v2
RUNC_VERSION="${QPU_K8S_RUNC_VERSION:-1.4.4}"            # github.com/opencontainers/runc
COREDNS_VERSION="${QPU_K8S_COREDNS_VERSION:-1.15.0}"     # github.com/coredns/coredns (trimmed plugin set: gomod/coredns)
KUEUE_VERSION="${QPU_K8S_KUEUE_VERSION:-0.17.0}"         # sigs.k8s.io/kueue (the batch queue; kueue.sh runs it)
# CNI plugins: Debian's containernetworking-plugins (bridge, host-local, loopback) in /usr/lib/cni.
CNI_BIN_DIR="/usr/lib/cni"

QPU_K8S_CACHE="${QPU_K8S_CACHE:-/var/cache/qpu-k8s}"
LC_CACHE="$QPU_K8S_CACHE/local-cluster"
LC_LOGS="$LC_CACHE/logs"
export GOMODCACHE="$QPU_K8S_CACHE/gomod"
export GOCACHE="$QPU_K8S_CACHE/gocache"
# Plain module downloads through the configured proxy; never fall back to VCS.
export GOFLAGS="-modcacherw" GOTOOLCHAIN=local GOWORK=off

K8S_BIN="$LC_CACHE/kubernetes-$K8S_VERSION/bin"
ETCD_BIN="$LC_CACHE/etcd-$ETCD_VERSION/bin"
CONTAINERD_BIN="$LC_CACHE/containerd-$CONTAINERD_VERSION/bin"
RUNC_BIN="$LC_CACHE/runc-$RUNC_VERSION/bin"
COREDNS_BIN="$LC_CACHE/coredns-$COREDNS_VERSION/bin"
KUEUE_BIN="$LC_CACHE/kueue-$KUEUE_VERSION/bin"
# Kueue's CRDs and webhook manifests, read from the module's source in the Go module cache.
KUEUE_SRC="$GOMODCACHE/sigs.k8s.io/kueue@v$KUEUE_VERSION"
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
IMAGES_DIR="$LC_CACHE/images"

# Local image names. Helm: --set image.repository=qpu.local/qpu-k8s,image.tag=dev
# (the chart's emulator image defaults to <repository>:<tag>-emulator).
PAUSE_IMAGE="qpu.local/pause:local"
BUSYBOX_IMAGE="qpu.local/busybox:1.35"
COREDNS_IMAGE="qpu.local/coredns:$COREDNS_VERSION"
AGENTS_IMAGE="qpu.local/qpu-k8s:dev"
EMULATOR_IMAGE="qpu.local/qpu-k8s:dev-emulator"

# ------------------------------------------------------------------ feature gates
# One list for every component (apiserver, kcm, scheduler, kubelet, kube-proxy). Taken from
# k8s.io/kubernetes@v1.37.2 pkg/features/kube_features.go (build.sh checks that every name
# exists there). In 1.37.2 all of these default to true already; naming them pins them.
# Locked on (GA, LockToDefault) and therefore not listed: DynamicResourceAllocation,
# DRAAdminAccess, DRAExtendedResource, DRAPrioritizedList, DRAResourceClaimDeviceStatus.
# Add alpha gates with QPU_K8S_EXTRA_FEATURE_GATES=DRADerivedAttributes=true,...
FEATURE_GATES="DRAConsumableCapacity=true,DRADeviceBindingConditions=true,DRADeviceTaints=true,DRADeviceTaintRules=true,DRAPartitionableDevices=true,ResourceHealthStatus=true,ResourceHealthStatusMessage=true"
if [ -n "${QPU_K8S_EXTRA_FEATURE_GATES:-}" ]; then FEATURE_GATES="$FEATURE_GATES,$QPU_K8S_EXTRA_FEATURE_GATES"; fi

# ------------------------------------------------------------------ cluster layout
RUN_DIR="${QPU_K8S_RUN_DIR:-/var/lib/qpu-k8s/local-cluster}"
KUBELET_ROOT="/var/lib/kubelet"   # fixed: DRA and device plugins hard-code it
NODE_NAME="127.0.0.1"
APISERVER_PORT="${QPU_K8S_APISERVER_PORT:-6443}"
ETCD_CLIENT_PORT="${QPU_K8S_ETCD_PORT:-12379}"
ETCD_PEER_PORT="${QPU_K8S_ETCD_PEER_PORT:-12380}"
KUBELET_PORT="${QPU_K8S_KUBELET_PORT:-10250}"
KUBELET_HEALTHZ_PORT="${QPU_K8S_KUBELET_HEALTHZ_PORT:-10248}"
CM_PORT="${QPU_K8S_CM_PORT:-10257}"
SCHED_PORT="${QPU_K8S_SCHED_PORT:-10259}"
PROXY_METRICS_PORT="${QPU_K8S_PROXY_METRICS_PORT:-10249}"
PROXY_HEALTHZ_PORT="${QPU_K8S_PROXY_HEALTHZ_PORT:-10256}"

# Pod network: an isolated bridge that up.sh creates; its address is the pods' gateway and
# the address at which pods reach the apiserver (a socat forwarder to 127.0.0.1).
BRIDGE="qpu-br0"
POD_CIDR="${QPU_K8S_POD_CIDR:-10.244.0.0/24}"
SERVICE_CIDR="${QPU_K8S_SERVICE_CIDR:-10.96.0.0/16}"
# The iptables chain (filter table) that keeps pod traffic on this machine.
FW_CHAIN="QPU-LOCAL-CLUSTER"

# Debian packages: build.sh installs both lists, up.sh the runtime ones that are missing.
BUILD_PKGS=(gcc libc6-dev libseccomp-dev pkg-config ca-certificates jq debootstrap python3-venv)
RUNTIME_PKGS=(containernetworking-plugins busybox-static openssl iptables conntrack socat
              iproute2 util-linux mount procps jq python3)

# ------------------------------------------------------------------ helpers
_ts() { date +%H:%M:%S; }
log()  { printf '\033[1;34m[%s %s]\033[0m %s\n' "$(_ts)" "${LC_TAG:-local-cluster}" "$*" >&2; }
warn() { printf '\033[1;33m[%s %s] WARNING:\033[0m %s\n' "$(_ts)" "${LC_TAG:-local-cluster}" "$*" >&2; }
die()  { printf '\033[1;31m[%s %s] ERROR:\033[0m %s\n' "$(_ts)" "${LC_TAG:-local-cluster}" "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run this as root (it installs Debian packages, mounts, and changes iptables and cgroups)"; }

# pid_running PID: the process exists and is not a zombie.
pid_running() {
  local st
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# ensure_pkgs PKG...: apt-get install what is missing; names the packages it could not get.
ensure_pkgs() {
  local missing=() p log=/tmp/qpu-local-cluster-apt.log
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    log "apt-get install failed; running apt-get update and retrying"
    apt-get update -q >>"$log" 2>&1 || { tail -n 20 "$log" >&2; die "apt-get update failed (log: $log)"; }
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
      tail -n 20 "$log" >&2
      local gone=()
      for p in "${missing[@]}"; do apt-cache show "$p" >/dev/null 2>&1 || gone+=("$p"); done
      [ ${#gone[@]} -eq 0 ] || die "Debian package(s) not available from the configured mirror: ${gone[*]}"
      die "apt-get install ${missing[*]} failed (log: $log)"
    fi
  fi
}

# stamp_ok DIR KEY: DIR/.build-ok exists and records KEY.
stamp_ok() { [ -f "$1/.build-ok" ] && grep -qxF "key=$2" "$1/.build-ok"; }
write_stamp() { printf 'key=%s\nbuilt=%s\ngo=%s\n' "$2" "$(date -u +%FT%TZ)" "$(go version 2>/dev/null || echo none)" > "$1/.build-ok"; }

# The built binaries and images up.sh needs.
cluster_bins_ok() {
  local b
  for b in "${K8S_BINARIES[@]}"; do [ -x "$K8S_BIN/$b" ] || return 1; done
  [ -x "$ETCD_BIN/etcd" ] && [ -x "$CONTAINERD_BIN/containerd" ] && [ -x "$CONTAINERD_BIN/ctr" ] \
    && [ -x "$CONTAINERD_BIN/containerd-shim-runc-v2" ] && [ -x "$RUNC_BIN/runc" ] && [ -x "$COREDNS_BIN/coredns" ]
}

# cidr_host CIDR N: the N-th address of an IPv4 network (10.96.0.0/16 1 -> 10.96.0.1).
cidr_host() { python3 -c 'import ipaddress,sys; print(ipaddress.ip_network(sys.argv[1])[int(sys.argv[2])])' "$1" "$2"; }
