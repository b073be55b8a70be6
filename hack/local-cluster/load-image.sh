#!/usr/bin/env bash
# Import docker-archive or OCI image tarballs into the running cluster's containerd (namespace
# k8s.io), where the kubelet finds them; pods then use them with imagePullPolicy Never or
# IfNotPresent (nothing can be pulled). Example:
#   hack/local-cluster/load-image.sh /var/cache/qpu-k8s/local-cluster/images/agents.tar
# Without arguments: re-import the project images that images.sh built (agents, emulator).
set -Eeuo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LC_TAG=load-image
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"
need_root
SOCK="$RUN_DIR/containerd/containerd.sock"
[ -S "$SOCK" ] || die "containerd is not running ($SOCK missing): run up.sh first"
CTR=("$CONTAINERD_BIN/ctr" --address "$SOCK" --namespace k8s.io)
[ $# -gt 0 ] || set -- "$IMAGES_DIR/agents.tar" "$IMAGES_DIR/emulator.tar"
for t in "$@"; do
  [ -s "$t" ] || die "$t: no such image tarball"
  t0=$(date +%s)
  out=$("${CTR[@]}" images import "$t" 2>&1) || { echo "$out" >&2; die "importing $t failed"; }
  log "imported $t in $(( $(date +%s) - t0 ))s: $(grep -oE '^(unpacking|saved) [^ ]+' <<<"$out" | awk '{print $2}' | sort -u | tr '\n' ' ')"
done
