#!/usr/bin/env bash
# Stop the cluster that up.sh started and undo what it changed on the host: only the
# processes in its PID files (and the shims/containers containerd started for it), the pods'
# network namespaces, mounts below the run dir and the kubelet root, the kubepods cgroups,
# the bridge and its route, our iptables chain, kube-proxy's rules, and the sysctls that
# changed while it ran. Safe to run any number of times, also after a failed up.sh.
#
# Usage: down.sh [--purge]   (--purge: also delete the run dir, logs included, and the
#                             kubelet root; the build caches always stay)
set -Euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LC_TAG=down
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
need_root
T0=$(date +%s)

PURGE=0
for a in "$@"; do
  case "$a" in
    --purge) PURGE=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) die "unknown argument: $a" ;;
  esac
done

PIDS="$RUN_DIR/pids"; STATE="$RUN_DIR/state"; CTRD="$RUN_DIR/containerd"; CTRD_SOCK="$CTRD/containerd.sock"
KCFG="$RUN_DIR/kubeconfig"

pid_of() { local f="$PIDS/$1.pid"; [ -f "$f" ] && cat "$f"; }
alive() { pid_running "${1:-}"; }

# stop NAME [GRACE]: SIGTERM the recorded process, SIGKILL after GRACE seconds. With
# --group the whole process group (the component was started by setsid, so the group is
# the component and its own children, e.g. socat's per-connection children).
stop() {
  local name=$1 grace=${2:-15} group=${3:-} pid i
  pid=$(pid_of "$name") || return 0
  if alive "$pid"; then
    log "stopping $name (pid $pid)"
    if [ "$group" = --group ]; then kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null; else kill -TERM "$pid" 2>/dev/null; fi
    for ((i = 0; i < grace * 10; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      warn "$name (pid $pid) still running after ${grace}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
    fi
  fi
  rm -f "$PIDS/$name.pid"
}

# 1. Pods: stop the controllers first so nothing re-creates them (Kueue too, if kueue.sh
#    started it), then let the kubelet tear them down (CNI DEL, unmounts) while it and the
#    apiserver still run.
if [ -f "$PIDS/kueue.pid" ] || [ -e /etc/kueue/.qpu-local-cluster ]; then
  "$HERE/kueue.sh" down || warn "kueue.sh down failed"
fi
stop kube-controller-manager 10
stop kube-scheduler 10
if alive "$(pid_of kubelet)" && alive "$(pid_of kube-apiserver)" && [ -f "$KCFG" ]; then
  n=$("$K8S_BIN/kubectl" --kubeconfig "$KCFG" get pods -A --no-headers 2>/dev/null | wc -l)
  if [ "${n:-0}" -gt 0 ]; then
    log "deleting $n pod(s) so that the kubelet stops them cleanly (at most 30s)"
    timeout 40 "$K8S_BIN/kubectl" --kubeconfig "$KCFG" delete pods --all -A --grace-period=2 --timeout=30s >/dev/null 2>&1 \
      || warn "not all pods went away in time; their containers are killed below"
  fi
fi

# 2. Kubernetes node components and the control plane.
stop kube-proxy 10
stop kubelet 15
stop kube-apiserver 15
stop apiserver-forward 5 --group

# 3. Containers that are left, through containerd while it runs.
NETNS=()
if alive "$(pid_of containerd)" && [ -S "$CTRD_SOCK" ]; then
  CTR=("$CONTAINERD_BIN/ctr" --address "$CTRD_SOCK" --namespace k8s.io)
  while read -r id pid _; do
    [ -n "$id" ] || continue
    ns=$(ip netns identify "$pid" 2>/dev/null || true)
    [ -z "$ns" ] || NETNS+=("$ns")
    "${CTR[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  done < <("${CTR[@]}" tasks ls 2>/dev/null | tail -n +2)
  for id in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true; done
fi
stop containerd 15

# 4. Shims and container processes that outlived containerd, by the PID files in its state.
for f in "$CTRD"/state/io.containerd.runtime.v2.task/*/*/init.pid "$CTRD"/state/io.containerd.runtime.v2.task/*/*/shim.pid; do
  [ -f "$f" ] || continue
  p=$(cat "$f" 2>/dev/null || true)
  if alive "$p"; then
    if [[ $f == */init.pid ]]; then ns=$(ip netns identify "$p" 2>/dev/null || true); [ -z "$ns" ] || NETNS+=("$ns"); fi
    log "killing leftover $(basename "$f" .pid) process $p"
    kill -KILL "$p" 2>/dev/null || true
  fi
done
stop etcd 15

# 5. Pod network namespaces (containerd names them cni-<uuid>) that still exist.
for ns in "${NETNS[@]}"; do
  if [ -e "/run/netns/$ns" ]; then log "deleting network namespace $ns"; ip netns delete "$ns" 2>/dev/null || true; fi
done

# 6. The bridge (its address and the Service route go with it), our FORWARD chain, and
#    kube-proxy's chains.
if ip link show "$BRIDGE" >/dev/null 2>&1; then log "deleting bridge $BRIDGE"; ip link delete "$BRIDGE" 2>/dev/null || true; fi
ip route del "$SERVICE_CIDR" 2>/dev/null || true
if command -v iptables >/dev/null; then
  while iptables -w -D FORWARD -j "$FW_CHAIN" 2>/dev/null; do :; done
  if iptables -w -L "$FW_CHAIN" -n >/dev/null 2>&1; then
    iptables -w -F "$FW_CHAIN"; iptables -w -X "$FW_CHAIN"; log "removed iptables chain $FW_CHAIN"
  fi
  if iptables-save 2>/dev/null | grep -q 'KUBE-'; then
    if "$K8S_BIN/kube-proxy" --cleanup >"$RUN_DIR/kube-proxy-cleanup.log" 2>&1; then
      log "removed kube-proxy's rules (kube-proxy --cleanup)"
    else
      warn "kube-proxy --cleanup exited non-zero (log: $RUN_DIR/kube-proxy-cleanup.log)"
    fi
  fi
  # What is left is the kubelet's (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT).
  # Removed only when up.sh saw no KUBE- chains before it started anything.
  if [ -f "$STATE/iptables.before" ] && ! grep -q 'KUBE-' "$STATE/iptables.before"; then
    n=0
    for ipt in iptables ip6tables; do
      command -v "$ipt" >/dev/null || continue
      for table in filter nat mangle raw; do
        while read -r line; do
          eval "set -- $line"
          [ "${1:-}" = -A ] || continue
          shift
          "$ipt" -w -t "$table" -D "$@" 2>/dev/null && n=$((n + 1))
        done < <("$ipt" -w -t "$table" -S 2>/dev/null | grep -E '^-A [^ ]+ .*-j KUBE-' | grep -vE '^-A KUBE-')
        for chain in $("$ipt" -w -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
          "$ipt" -w -t "$table" -F "$chain" 2>/dev/null
        done
        for chain in $("$ipt" -w -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
          "$ipt" -w -t "$table" -X "$chain" 2>/dev/null && n=$((n + 1))
        done
      done
    done
    [ "$n" -eq 0 ] || log "removed $n KUBE-* chain(s)/jump(s) left by the kubelet"
  elif [ -f "$STATE/iptables.before" ]; then
    warn "KUBE-* iptables chains existed before up.sh: left as they are"
  fi
  command -v conntrack >/dev/null && conntrack -D -s "$POD_CIDR" >/dev/null 2>&1 || true
  command -v conntrack >/dev/null && conntrack -D -d "$POD_CIDR" >/dev/null 2>&1 || true
fi

# 7. Mounts below the run dir and the kubelet root, deepest first.
umount_below() {
  local root=$1 m n=0
  [ -d "$root" ] || return 0
  while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || warn "could not unmount $m"
    n=$((n + 1))
  done < <(awk -v r="$root" '{ m = $5; gsub(/\\040/, " ", m); if (m == r || index(m, r "/") == 1) print m }' /proc/self/mountinfo | sort -r -u)
  [ "$n" -eq 0 ] || log "unmounted $n mount(s) below $root"
}
umount_below "$RUN_DIR"
umount_below "$KUBELET_ROOT"

# 8. The kubelet's cgroups (cgroup v1, cgroupfs driver: kubepods in every hierarchy).
for h in /sys/fs/cgroup/*/kubepods; do
  [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} + 2>/dev/null
done
left=$(find /sys/fs/cgroup/*/kubepods -maxdepth 0 -type d 2>/dev/null | wc -l)
[ "$left" -eq 0 ] || warn "$left kubepods cgroup(s) still in use"

# 9. Kernel settings: back to what they were before up.sh (the kubelet sets vm.* and
#    kernel.panic*, kube-proxy may set conntrack limits).
if [ -f "$STATE/sysctl.before" ]; then
  while IFS='=' read -r k v; do
    [ -n "$k" ] || continue
    if [ "$(sysctl -n "$k" 2>/dev/null)" != "$v" ]; then
      if sysctl -qw "$k=$v" 2>/dev/null; then log "restored $k=$v"; else warn "could not restore $k=$v"; fi
    fi
  done < "$STATE/sysctl.before"
  rm -f "$STATE/sysctl.before"
fi

if [ "$PURGE" = 1 ]; then
  log "removing $RUN_DIR and $KUBELET_ROOT"
  rm -rf "$RUN_DIR"
  if ! grep -qs " $KUBELET_ROOT/" /proc/self/mountinfo; then rm -rf "$KUBELET_ROOT"; fi
  # The directories up.sh created, if nothing else put files there.
  rmdir /var/run/cdi "$(dirname "$RUN_DIR")" 2>/dev/null || true
fi
log "stopped in $(( $(date +%s) - T0 ))s"
