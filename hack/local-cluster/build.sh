#!/usr/bin/env bash
# Build the local cluster's parts from upstream Go modules into $QPU_K8S_CACHE/local-cluster:
#   Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy,
#   kubectl) via gomod/kubernetes, etcd via gomod/etcd, CoreDNS via gomod/coredns,
#   containerd + containerd-shim-runc-v2 + ctr and runc (seccomp, cgo) via `go install`,
#   Kueue (sigs.k8s.io/kueue, run by kueue.sh) via `go install`,
# then the container images (images.sh). Every part has its own directory and .build-ok
# marker keyed on its version and recipe, so a second run only checks the markers.
#
# Usage: build.sh [--no-images]
# Env:   QPU_K8S_CACHE (default /var/cache/qpu-k8s), QPU_K8S_REBUILD=1 (ignore the markers).
set -Eeuo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LC_TAG=build
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"
trap 'die "build.sh failed at line $LINENO: $BASH_COMMAND"' ERR

WITH_IMAGES=1
for a in "$@"; do
  case "$a" in
    --no-images) WITH_IMAGES=0 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) die "unknown argument: $a" ;;
  esac
done

need_root
T0=$(date +%s)
mkdir -p "$LC_LOGS" "$GOMODCACHE" "$GOCACHE"
TIMES="$LC_LOGS/build-times.log"
ensure_pkgs "${BUILD_PKGS[@]}" "${RUNTIME_PKGS[@]}"
command -v go >/dev/null || die "go is not on PATH (Go >= 1.26.8 is needed to build the upstream modules)"
GOVER=$(go env GOVERSION)
log "$GOVER, GOMODCACHE=$GOMODCACHE, GOCACHE=$GOCACHE"

# run_go LOG CMD...: run a go command with its output in LOG; on failure say why in one line.
run_go() {
  local logf=$1; shift
  if "$@" >"$logf" 2>&1; then return 0; fi
  tail -n 25 "$logf" >&2
  local served
  served=$(grep -E '(403 Forbidden|404 Not Found|410 Gone|not available|unknown revision|invalid version|not found: )' "$logf" | head -n 3 || true)
  [ -z "$served" ] || die "a module version is not served by the Go module proxy ($(go env GOPROXY)):
$served
(choose another version in lib.sh; full log: $logf)"
  grep -q 'requires go >= ' "$logf" && die "a module needs a newer Go than $GOVER: $(grep -m1 'requires go >= ' "$logf") (log: $logf)"
  die "'$*' failed (log: $logf)"
}

# timed NAME CMD...: run CMD and record its wall time in build-times.log.
timed() {
  local name=$1 t; shift
  t=$(date +%s)
  "$@"
  printf '%s %-28s %4ss\n' "$(date -u +%FT%TZ)" "$name" "$(( $(date +%s) - t ))" >> "$TIMES"
  log "  $name: $(( $(date +%s) - t ))s"
}

# mod_require GO.MOD MODULE: the version GO.MOD requires of MODULE.
mod_require() {
  go mod edit -json "$1" | python3 -c 'import json,sys; print(*[r["Version"] for r in json.load(sys.stdin).get("Require") or [] if r["Path"] == sys.argv[1]])' "$2"
}

# hash_files FILE...: one sha256 over the files' contents (a recipe key).
hash_files() { cat "$@" | sha256sum | cut -c1-16; }

REBUILD="${QPU_K8S_REBUILD:-0}"
# Bump when a build recipe below changes (flags, tags): the parts are then rebuilt.
RECIPE=1

# ------------------------------------------------------------------ Kubernetes
K8S_MOD_DIR="$HERE/gomod/kubernetes"
STAGING_VERSION="0.${K8S_VERSION#1.}"   # 1.37.2 -> 0.37.2

# The wrapper modules are built from a copy in the cache ($MODWORK), never in the work tree, so
# builds of different versions cannot step on each other and the checkout stays clean.
K8S_MODWORK="${K8S_BIN%/bin}/mod"

# Point the wrapper module at k8s.io/kubernetes v$K8S_VERSION and replace every staging module
# that upstream's go.mod maps to ./staging/src/... by its published v$STAGING_VERSION.
sync_k8s_module() {
  local up mods m dl="$LC_LOGS/k8s-download.json"
  if ! go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" >"$dl" 2>"$LC_LOGS/k8s-download.log"; then
    die "k8s.io/kubernetes@v$K8S_VERSION: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("Error"))' "$dl" 2>/dev/null || cat "$LC_LOGS/k8s-download.log")
(a 403/404/410 from the Go module proxy means this version is not served: pick another K8S_VERSION in lib.sh)"
  fi
  up=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["GoMod"])' "$dl")
  local want; want=$(awk '$1 == "go" {print $2; exit}' "$up")
  if [ "$(printf '%s\n%s\n' "$want" "${GOVER#go}" | sort -V | head -n1)" != "$want" ]; then
    die "k8s.io/kubernetes v$K8S_VERSION needs go $want, this is $GOVER (export GOTOOLCHAIN=go$want if the proxy serves it)"
  fi
  mods=$(grep -oE '^[[:space:]]*k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$up" | awk '{print $1}' | sort -u)
  [ -n "$mods" ] || die "no staging replaces found in $up"
  rm -rf "$K8S_MODWORK"; mkdir -p "$K8S_MODWORK"
  cp "$K8S_MOD_DIR/go.mod" "$K8S_MOD_DIR/go.sum" "$K8S_MODWORK/"
  (
    cd "$K8S_MODWORK"
    # Drop what the checked-in file has, then write this version's requirements.
    go mod edit -json | python3 -c 'import json,sys; [print(r["Old"]["Path"]) for r in json.load(sys.stdin).get("Replace") or []]' \
      | while read -r m; do go mod edit -dropreplace="$m"; done
    go mod edit -require="k8s.io/kubernetes@v$K8S_VERSION"
    for m in $mods; do go mod edit -replace="$m=$m@v$STAGING_VERSION"; done
    for m in "${K8S_BINARIES[@]}"; do go mod edit -tool="k8s.io/kubernetes/cmd/$m"; done
    run_go "$LC_LOGS/k8s-tidy.log" go mod tidy
  )
  log "  gomod/kubernetes: k8s.io/kubernetes v$K8S_VERSION, $(wc -w <<<"$mods") staging modules at v$STAGING_VERSION ($K8S_MODWORK)"
  if [ "$(mod_require "$K8S_MOD_DIR/go.mod" k8s.io/kubernetes)" = "v$K8S_VERSION" ] \
     && ! cmp -s "$K8S_MOD_DIR/go.mod" "$K8S_MODWORK/go.mod"; then
    warn "gomod/kubernetes/go.mod differs from what upstream's v$K8S_VERSION go.mod gives: cp $K8S_MODWORK/go.{mod,sum} $K8S_MOD_DIR/"
  fi
}

# Every gate in FEATURE_GATES must exist in this release's kube_features.go (a typo or a
# removed gate would stop the components at start-up).
check_feature_gates() {
  local src="$GOMODCACHE/k8s.io/kubernetes@v$K8S_VERSION/pkg/features/kube_features.go" g name bad=()
  [ -f "$src" ] || die "$src missing"
  IFS=, read -ra gates <<<"$FEATURE_GATES"
  for g in "${gates[@]}"; do
    name=${g%%=*}
    grep -qE "^[[:space:]]+$name featuregate\.Feature = \"$name\"" "$src" || bad+=("$name")
  done
  [ ${#bad[@]} -eq 0 ] || die "feature gate(s) not in Kubernetes $K8S_VERSION: ${bad[*]} (lib.sh FEATURE_GATES)"
}

build_k8s() {
  local dir="${K8S_BIN%/bin}" key ld p b
  key="v$K8S_VERSION;recipe=$RECIPE"
  if [ "$REBUILD" != 1 ] && stamp_ok "$K8S_BIN" "k8s=$key"; then
    log "[k8s] Kubernetes v$K8S_VERSION: cached ($K8S_BIN)"; return 0
  fi
  log "[k8s] Kubernetes v$K8S_VERSION from k8s.io/kubernetes (one go build per binary; logs in $LC_LOGS)"
  timed "k8s module sync" sync_k8s_module
  check_feature_gates
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION")"
    ld="$ld -X $p.gitTreeState=clean -X $p.gitCommit=v$K8S_VERSION -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  mkdir -p "$K8S_BIN"
  rm -f "$K8S_BIN/.build-ok"
  for b in "${K8S_BINARIES[@]}"; do
    # Upstream links the control plane and kubectl statically (CGO_ENABLED=0); the kubelet
    # needs no cgo either.
    timed "k8s $b" run_go "$LC_LOGS/k8s-$b.log" \
      env -C "$K8S_MODWORK" CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$K8S_BIN/$b.new" "k8s.io/kubernetes/cmd/$b"
    mv -f "$K8S_BIN/$b.new" "$K8S_BIN/$b"
  done
  "$K8S_BIN/kubelet" --version | grep -qx "Kubernetes v$K8S_VERSION" \
    || die "kubelet --version says '$("$K8S_BIN/kubelet" --version)', expected 'Kubernetes v$K8S_VERSION'"
  write_stamp "$K8S_BIN" "k8s=$key"
  log "  $("$K8S_BIN/kubelet" --version); binaries in $dir/bin"
}

# ------------------------------------------------------------------ etcd, CoreDNS (wrapper mains)
build_wrapper() {  # NAME VERSION BINDIR MODULE LDFLAGS
  local name=$1 ver=$2 bin=$3 module=$4 ld=$5 src="$HERE/gomod/$1" key dir="${3%/bin}/mod"
  key="$ver;recipe=$RECIPE;$(hash_files "$src/go.mod" "$src/main.go")"
  if [ "$REBUILD" != 1 ] && stamp_ok "$bin" "$name=$key"; then log "[$name] $name v$ver: cached ($bin)"; return 0; fi
  log "[$name] $name v$ver via gomod/$name"
  rm -rf "$dir"; mkdir -p "$dir"; cp "$src/go.mod" "$src/go.sum" "$src/main.go" "$dir/"
  (
    cd "$dir"
    if [ "$(mod_require go.mod "$module")" != "v$ver" ]; then
      go mod edit -require="$module@v$ver"
      run_go "$LC_LOGS/$name-tidy.log" go mod tidy
    fi
  )
  mkdir -p "$bin"; rm -f "$bin/.build-ok"
  timed "$name" run_go "$LC_LOGS/$name.log" \
    env -C "$dir" CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ld" -o "$bin/$name.new" .
  mv -f "$bin/$name.new" "$bin/$name"
  write_stamp "$bin" "$name=$key"
}

# ------------------------------------------------------------------ containerd, runc (go install)
build_containerd() {
  local key="v$CONTAINERD_VERSION;recipe=$RECIPE" m="github.com/containerd/containerd/v2" ld
  if [ "$REBUILD" != 1 ] && stamp_ok "$CONTAINERD_BIN" "containerd=$key"; then log "[containerd] v$CONTAINERD_VERSION: cached ($CONTAINERD_BIN)"; return 0; fi
  log "[containerd] containerd, containerd-shim-runc-v2, ctr v$CONTAINERD_VERSION"
  ld="-s -w -X $m/version.Version=v$CONTAINERD_VERSION -X $m/version.Revision=v$CONTAINERD_VERSION"
  mkdir -p "$CONTAINERD_BIN"; rm -f "$CONTAINERD_BIN/.build-ok"
  # Upstream's static builds: no btrfs (it needs cgo), the shim without the grpc server.
  timed "containerd" run_go "$LC_LOGS/containerd.log" env GOBIN="$CONTAINERD_BIN" CGO_ENABLED=0 \
    go install -trimpath -tags "no_btrfs urfave_cli_no_docs" -ldflags "$ld" "$m/cmd/containerd@v$CONTAINERD_VERSION"
  timed "ctr" run_go "$LC_LOGS/ctr.log" env GOBIN="$CONTAINERD_BIN" CGO_ENABLED=0 \
    go install -trimpath -tags "no_btrfs urfave_cli_no_docs" -ldflags "$ld" "$m/cmd/ctr@v$CONTAINERD_VERSION"
  timed "containerd-shim-runc-v2" run_go "$LC_LOGS/containerd-shim.log" env GOBIN="$CONTAINERD_BIN" CGO_ENABLED=0 \
    go install -trimpath -tags "no_grpc" -ldflags "$ld" "$m/cmd/containerd-shim-runc-v2@v$CONTAINERD_VERSION"
  "$CONTAINERD_BIN/containerd" --version | grep -q "v$CONTAINERD_VERSION" || die "containerd --version: $("$CONTAINERD_BIN/containerd" --version)"
  write_stamp "$CONTAINERD_BIN" "containerd=$key"
}

build_runc() {
  local key="v$RUNC_VERSION;recipe=$RECIPE"
  if [ "$REBUILD" != 1 ] && stamp_ok "$RUNC_BIN" "runc=$key"; then log "[runc] v$RUNC_VERSION: cached ($RUNC_BIN)"; return 0; fi
  log "[runc] runc v$RUNC_VERSION with seccomp (cgo, libseccomp-dev)"
  mkdir -p "$RUNC_BIN"; rm -f "$RUNC_BIN/.build-ok"
  timed "runc" run_go "$LC_LOGS/runc.log" env GOBIN="$RUNC_BIN" CGO_ENABLED=1 \
    go install -trimpath -tags "seccomp urfave_cli_no_docs" \
    -ldflags "-s -w -X main.version=$RUNC_VERSION -X main.gitCommit=v$RUNC_VERSION" \
    "github.com/opencontainers/runc@v$RUNC_VERSION"
  "$RUNC_BIN/runc" --version | grep -q '^libseccomp: ' || die "runc was built without seccomp: $("$RUNC_BIN/runc" --version)"
  write_stamp "$RUNC_BIN" "runc=$key"
}

# ------------------------------------------------------------------ Kueue (the batch queue)
# `go install` of its manager: upstream's go.mod has no replace directives and asks for
# k8s.io/* v0.35, which talk to the 1.37 apiserver within the client skew. The build runs at
# nice 19 (it is the largest after Kubernetes and CI shares the machine). kueue.sh installs
# the CRDs and webhook manifests from the module's source in the module cache, which the
# marker therefore also requires.
build_kueue() {
  local key="v$KUEUE_VERSION;recipe=$RECIPE" m="sigs.k8s.io/kueue"
  if [ "$REBUILD" != 1 ] && stamp_ok "$KUEUE_BIN" "kueue=$key" && [ -d "$KUEUE_SRC/config/components/crd/bases" ]; then
    log "[kueue] v$KUEUE_VERSION: cached ($KUEUE_BIN)"; return 0
  fi
  log "[kueue] Kueue v$KUEUE_VERSION from $m (nice 19)"
  mkdir -p "$KUEUE_BIN"; rm -f "$KUEUE_BIN/.build-ok"
  timed "kueue" run_go "$LC_LOGS/kueue.log" env GOBIN="$KUEUE_BIN" CGO_ENABLED=0 nice -n 19 \
    go install -trimpath -ldflags "-s -w -X $m/pkg/version.GitVersion=v$KUEUE_VERSION -X $m/pkg/version.GitCommit=v$KUEUE_VERSION" \
    "$m/cmd/kueue@v$KUEUE_VERSION"
  go version -m "$KUEUE_BIN/kueue" | grep -qE "^[[:space:]]+mod[[:space:]]+${m}[[:space:]]+v${KUEUE_VERSION}([[:space:]]|\$)" \
    || die "$KUEUE_BIN/kueue is not $m v$KUEUE_VERSION: $(go version -m "$KUEUE_BIN/kueue" | grep -m1 mod)"
  [ -f "$KUEUE_SRC/config/components/crd/bases/kueue.x-k8s.io_workloads.yaml" ] \
    && [ -f "$KUEUE_SRC/config/components/webhook/manifests.yaml" ] \
    || die "Kueue v$KUEUE_VERSION's CRDs or webhook manifests are not in $KUEUE_SRC/config/components (the layout changed: adapt kueue.sh)"
  write_stamp "$KUEUE_BIN" "kueue=$key"
}

build_k8s
build_wrapper etcd "$ETCD_VERSION" "$ETCD_BIN" go.etcd.io/etcd/server/v3 "-X go.etcd.io/etcd/api/v3/version.GitSHA=v$ETCD_VERSION"
build_wrapper coredns "$COREDNS_VERSION" "$COREDNS_BIN" github.com/coredns/coredns "-X github.com/coredns/coredns/coremain.GitCommit=v$COREDNS_VERSION"
build_containerd
build_runc
build_kueue
log "binaries: $("$K8S_BIN/kubelet" --version), etcd $("$ETCD_BIN/etcd" --version | awk '/etcd Version/ {print $3}'), $("$CONTAINERD_BIN/containerd" --version | awk '{print $3}'), runc $("$RUNC_BIN/runc" --version | awk 'NR==1 {print $3}'), $("$COREDNS_BIN/coredns" -version | awk "NR == 1"), Kueue v$KUEUE_VERSION"

if [ "$WITH_IMAGES" = 1 ]; then
  "$HERE/images.sh"
fi
log "build done in $(( $(date +%s) - T0 ))s (step times: $TIMES)"
