#!/usr/bin/env bash
# Build the local cluster's container images as docker-archive tarballs, without Docker or a
# registry, into $QPU_K8S_CACHE/local-cluster/images (up.sh imports them into containerd):
#   pause.tar     qpu.local/pause:local          a static Go pause (pause/main.go)
#   busybox.tar   qpu.local/busybox:1.35         Debian's busybox-static, every applet
#   coredns.tar   qpu.local/coredns:<version>    the CoreDNS that build.sh compiled
#   agents.tar    qpu.local/qpu-k8s:dev          = the Dockerfile's `agents` target
#   emulator.tar  qpu.local/qpu-k8s:dev-emulator = the Dockerfile's `emulator` target
# The two project images share one base layer: a debootstrap'ed bookworm (minbase) with
# python3, the uid/gid 65532 user `qpu`, and a second layer holding only /opt/venv (our wheel
# and its dependencies pinned by docker/constraints.txt). Each tar is cached under a key made
# of what it contains (base recipe, constraints file, content hash of the wheel), so a run
# with nothing changed takes seconds (building the wheel to hash it is most of that).
#
# Usage: images.sh [--no-project]   (--no-project: only pause, busybox, coredns)
# Env:   QPU_K8S_CACHE, QPU_K8S_DEBIAN_MIRROR (default: the first bookworm `deb` URI of the
#        machine's apt sources), QPU_K8S_REBUILD=1
set -Eeuo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
LC_TAG=images
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"
trap 'die "images.sh failed at line $LINENO: $BASH_COMMAND"' ERR

PROJECT=1
for a in "$@"; do
  case "$a" in
    --no-project) PROJECT=0 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) die "unknown argument: $a" ;;
  esac
done
need_root
ensure_pkgs debootstrap busybox-static jq python3-venv ca-certificates
T0=$(date +%s)
REBUILD="${QPU_K8S_REBUILD:-0}"
mkdir -p "$IMAGES_DIR" "$LC_LOGS"
TIMES="$LC_LOGS/build-times.log"
WORK=$(mktemp -d "$IMAGES_DIR/.work.XXXXXX")
MOUNTED=()
cleanup() {
  local m
  for m in "${MOUNTED[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

sha() { sha256sum | cut -c1-16; }

# layer_tar DIR OUT [PATH...]: one image layer from DIR (numeric owners, sorted names, the
# files' own mtimes so the .pyc files stay valid).
layer_tar() {
  local dir=$1 out=$2; shift 2
  [ $# -gt 0 ] || set -- .
  tar --numeric-owner --sort=name --xattrs --xattrs-include='security.capability' -C "$dir" -cf "$out.tmp" "$@"
  mv "$out.tmp" "$out"
}

# image_tar OUT REF CONFIG_JSON LAYER_TAR...: a docker-archive (what `docker save` writes,
# which `ctr images import` reads) with the given layers, lowest first.
image_tar() {
  local out=$1 ref=$2 cfg=$3; shift 3
  local d; d=$(mktemp -d "$WORK/img.XXXXXX")
  local diffs=() paths=() l id
  for l in "$@"; do
    id=$(sha256sum "$l" | cut -d' ' -f1)
    mkdir -p "$d/$id"; ln "$l" "$d/$id/layer.tar" 2>/dev/null || cp "$l" "$d/$id/layer.tar"
    diffs+=("sha256:$id"); paths+=("$id/layer.tar")
  done
  local cfgjson cfgid
  cfgjson=$(jq -cn --argjson cfg "$cfg" --args '{architecture: "amd64", os: "linux", created: "1970-01-01T00:00:00Z",
      config: $cfg, rootfs: {type: "layers", diff_ids: $ARGS.positional},
      history: [$ARGS.positional[] | {created: "1970-01-01T00:00:00Z", created_by: "hack/local-cluster/images.sh"}]}' "${diffs[@]}")
  cfgid=$(printf '%s' "$cfgjson" | sha256sum | cut -d' ' -f1)
  printf '%s' "$cfgjson" > "$d/$cfgid.json"
  jq -cn --arg c "$cfgid.json" --arg r "$ref" --args '[{Config: $c, RepoTags: [$r], Layers: $ARGS.positional}]' "${paths[@]}" > "$d/manifest.json"
  tar --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$d" -cf "$out.tmp" manifest.json "$cfgid.json" "${paths[@]%/layer.tar}"
  mv "$out.tmp" "$out"
  rm -rf "$d"
}

# keyed NAME KEY: true when $IMAGES_DIR/NAME.tar was built for KEY.
keyed() { [ "$REBUILD" != 1 ] && [ -s "$IMAGES_DIR/$1.tar" ] && [ "$(cat "$IMAGES_DIR/$1.key" 2>/dev/null)" = "$2" ]; }
done_image() { echo "$2" > "$IMAGES_DIR/$1.key"; log "  $1.tar: $(du -h "$IMAGES_DIR/$1.tar" | cut -f1) ($3)"; }

# ------------------------------------------------------------------ pause
KEY=$(cat "$HERE/pause/main.go" "$HERE/pause/go.mod" | sha)
if keyed pause "$KEY"; then log "pause: cached"; else
  mkdir -p "$WORK/pause/root"
  (cd "$HERE/pause" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$WORK/pause/root/pause" .)
  layer_tar "$WORK/pause/root" "$WORK/pause/layer.tar"
  image_tar "$IMAGES_DIR/pause.tar" "$PAUSE_IMAGE" '{"Entrypoint":["/pause"]}' "$WORK/pause/layer.tar"
  done_image pause "$KEY" "$PAUSE_IMAGE"
fi

# ------------------------------------------------------------------ busybox
KEY=$(dpkg-query -W -f='${Version}' busybox-static | sha)
if keyed busybox "$KEY"; then log "busybox: cached"; else
  R="$WORK/busybox/root"
  mkdir -p "$R/bin" "$R/etc" "$R/tmp" "$R/proc" "$R/sys" "$R/dev" "$R/root"
  chmod 1777 "$R/tmp"
  cp /bin/busybox "$R/bin/busybox"
  for a in $("$R/bin/busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$R/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$R/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$R/etc/group"
  layer_tar "$R" "$WORK/busybox/layer.tar"
  image_tar "$IMAGES_DIR/busybox.tar" "$BUSYBOX_IMAGE" '{"Env":["PATH=/bin"],"Cmd":["sh"],"WorkingDir":"/"}' "$WORK/busybox/layer.tar"
  done_image busybox "$KEY" "$BUSYBOX_IMAGE"
fi

# ------------------------------------------------------------------ coredns
if [ ! -x "$COREDNS_BIN/coredns" ]; then warn "coredns image skipped: $COREDNS_BIN/coredns missing (build.sh builds it)"
elif keyed coredns "$(sha < "$COREDNS_BIN/coredns")"; then log "coredns: cached"; else
  KEY=$(sha < "$COREDNS_BIN/coredns")
  R="$WORK/coredns/root"
  mkdir -p "$R/etc" "$R/tmp"
  cp "$COREDNS_BIN/coredns" "$R/coredns"
  printf 'root:x:0:0:root:/:/coredns\nnobody:x:65534:65534:nobody:/nonexistent:/coredns\n' > "$R/etc/passwd"
  layer_tar "$R" "$WORK/coredns/layer.tar"
  image_tar "$IMAGES_DIR/coredns.tar" "$COREDNS_IMAGE" '{"Entrypoint":["/coredns"],"ExposedPorts":{"53/udp":{},"53/tcp":{}}}' "$WORK/coredns/layer.tar"
  done_image coredns "$KEY" "$COREDNS_IMAGE"
fi
printf '%s %-28s %4ss\n' "$(date -u +%FT%TZ)" "images: pause busybox coredns" "$(( $(date +%s) - T0 ))" >> "$TIMES"
[ "$PROJECT" = 1 ] || { log "done (--no-project) in $(( $(date +%s) - T0 ))s"; exit 0; }

# ------------------------------------------------------------------ base rootfs (shared layer)
mirror() {
  [ -n "${QPU_K8S_DEBIAN_MIRROR:-}" ] && { echo "$QPU_K8S_DEBIAN_MIRROR"; return; }
  local m
  # deb822 (.sources): the URIs of the stanza whose Suites has plain bookworm.
  m=$(awk 'BEGIN{RS=""} /Suites:[^\n]*bookworm([ \n]|$)/ && /Types:[^\n]*deb/ {
           if (match($0, /URIs:[ \t]*[^ \t\n]+/)) { s = substr($0, RSTART, RLENGTH); sub(/URIs:[ \t]*/, "", s); print s; exit } }' \
      /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$m" ] || m=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  [ -n "$m" ] || die "no bookworm mirror in /etc/apt/sources.list*; set QPU_K8S_DEBIAN_MIRROR"
  echo "$m"
}
MIRROR=$(mirror)
# Packages on top of minbase: what python:3.11-slim-bookworm carries at run time.
BASE_PKGS="python3,ca-certificates,netbase,tzdata"
BASE_RECIPE="bookworm minbase include=$BASE_PKGS mirror=$MIRROR upgrade=bookworm-updates,bookworm-security user=qpu:65532 v1"
BASE_KEY=$(sha <<<"$BASE_RECIPE")
BASE="$IMAGES_DIR/base-$BASE_KEY"
if [ "$REBUILD" != 1 ] && [ -f "$BASE/.build-ok" ]; then log "base rootfs: cached ($BASE)"; else
  TB=$(date +%s)
  log "base rootfs: debootstrap --variant=minbase bookworm from $MIRROR (log: $LC_LOGS/debootstrap.log)"
  rm -rf "$BASE"; mkdir -p "$BASE"
  R="$BASE/rootfs"
  debootstrap --variant=minbase --include="$BASE_PKGS" bookworm "$R" "$MIRROR" >"$LC_LOGS/debootstrap.log" 2>&1 \
    || { tail -n 20 "$LC_LOGS/debootstrap.log" >&2; die "debootstrap failed (log: $LC_LOGS/debootstrap.log)"; }
  # The point releases and security fixes, from the machine's own apt sources.
  cp /etc/apt/sources.list.d/debian.sources "$R/etc/apt/sources.list.d/" 2>/dev/null || true
  if [ -f "$R/etc/apt/sources.list.d/debian.sources" ]; then rm -f "$R/etc/apt/sources.list"; fi
  cp /etc/resolv.conf "$R/etc/resolv.conf"
  mount -t proc proc "$R/proc"; MOUNTED+=("$R/proc")
  chroot "$R" sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -y -q upgrade' >>"$LC_LOGS/debootstrap.log" 2>&1 \
    || { tail -n 20 "$LC_LOGS/debootstrap.log" >&2; die "apt-get upgrade in the base rootfs failed"; }
  chroot "$R" groupadd --gid 65532 qpu
  chroot "$R" useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin qpu
  umount "$R/proc"; MOUNTED=()
  rm -rf "$R/var/lib/apt/lists/"* "$R/var/cache/apt/"*.bin "$R/var/cache/apt/archives/"*.deb "$R/var/log/"*.log \
         "$R/etc/resolv.conf" "$R/tmp/"* "$R/root/.cache"
  : > "$R/etc/resolv.conf"
  layer_tar "$R" "$BASE/layer.tar"
  echo "$BASE_RECIPE" > "$BASE/.build-ok"
  printf '%s %-28s %4ss\n' "$(date -u +%FT%TZ)" "images: base rootfs" "$(( $(date +%s) - TB ))" >> "$TIMES"
  log "  base rootfs $(du -sh "$R" | cut -f1), python $(chroot "$R" python3 -V | cut -d' ' -f2), $(( $(date +%s) - TB ))s"
  # Older bases are not needed any more.
  find "$IMAGES_DIR" -maxdepth 1 -name 'base-*' ! -name "base-$BASE_KEY" -exec rm -rf {} +
fi

# ------------------------------------------------------------------ our wheel
# Build tools pinned as in the Dockerfile's builder stage, in a scratch venv of Debian's
# python3 (3.11, like the image's).
PIP_PIN="pip==26.3"; SETUPTOOLS_PIN="setuptools==84.2.1"; WHEEL_PIN="wheel==0.48.0"
BV="$IMAGES_DIR/buildvenv-$(sha <<<"$PIP_PIN $SETUPTOOLS_PIN $WHEEL_PIN $(/usr/bin/python3 -V)")"
if [ ! -x "$BV/bin/pip" ]; then
  log "build venv $BV ($PIP_PIN $SETUPTOOLS_PIN $WHEEL_PIN)"
  rm -rf "$BV"; /usr/bin/python3 -m venv "$BV"
  "$BV/bin/python" -m pip install -q --disable-pip-version-check "$PIP_PIN" "$SETUPTOOLS_PIN" "$WHEEL_PIN" >"$LC_LOGS/buildvenv.log" 2>&1 \
    || { tail -n 20 "$LC_LOGS/buildvenv.log" >&2; rm -rf "$BV"; die "could not install the build tools from PyPI"; }
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# The files the Dockerfile copies into its builder stage, in a scratch copy (the build must
# not leave build/ or *.egg-info in the work tree).
SRC="$WORK/src"; mkdir -p "$SRC"
(cd "$REPO" && cp -a pyproject.toml README.md qpu_k8s "$SRC/")
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p "$WORK/wheel"
SOURCE_DATE_EPOCH=315532800 "$BV/bin/python" -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$WORK/wheel" "$SRC" \
  >"$LC_LOGS/wheel.log" 2>&1 || { tail -n 20 "$LC_LOGS/wheel.log" >&2; die "building the qpu-k8s wheel failed (log: $LC_LOGS/wheel.log)"; }
WHEEL=$(ls "$WORK"/wheel/qpu_k8s-*.whl)
# What the wheel holds, not its bytes (zip timestamps and RECORD vary between builds).
WHEEL_HASH=$(/usr/bin/python3 - "$WHEEL" <<'EOF'
import hashlib, sys, zipfile
h = hashlib.sha256()
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in sorted(z.namelist()):
        if name.endswith(".dist-info/RECORD"):
            continue
        h.update(name.encode() + b"\0" + hashlib.sha256(z.read(name)).digest())
print(h.hexdigest()[:16])
EOF
)
CONSTRAINTS="$REPO/docker/constraints.txt"
CON_HASH=$(sha < "$CONSTRAINTS")
log "wheel $(basename "$WHEEL") content $WHEEL_HASH, constraints $CON_HASH"

# Dependency wheels for the emulator extra (a superset of the agents' ones), pinned.
DEPS="$IMAGES_DIR/wheels-$CON_HASH-$(unzip -p "$WHEEL" '*.dist-info/METADATA' | grep '^Requires-Dist:' | sha)"
VENV_RECIPE="venv --without-pip; pip from $PIP_PIN wheel; --no-index; v1"
need_deps=0
for flavour in agents emulator; do
  keyed "$flavour" "$(sha <<<"$BASE_KEY $CON_HASH $WHEEL_HASH $VENV_RECIPE $flavour")" || need_deps=1
done
if [ "$need_deps" = 1 ] && [ ! -f "$DEPS/.build-ok" ]; then
  TB=$(date +%s)
  log "dependency wheels (constraints: docker/constraints.txt) into $DEPS"
  rm -rf "$DEPS"; mkdir -p "$DEPS"
  PIP_CONSTRAINT="$CONSTRAINTS" "$BV/bin/python" -m pip wheel -q --wheel-dir "$DEPS" "${WHEEL}[emulator]" >"$LC_LOGS/wheels.log" 2>&1 \
    || { tail -n 20 "$LC_LOGS/wheels.log" >&2; die "pip wheel of the dependencies failed (log: $LC_LOGS/wheels.log)"; }
  rm -f "$DEPS"/qpu_k8s-*.whl
  "$BV/bin/python" -m pip download -q --no-deps --dest "$DEPS" "$PIP_PIN" >>"$LC_LOGS/wheels.log" 2>&1
  touch "$DEPS/.build-ok"
  printf '%s %-28s %4ss\n' "$(date -u +%FT%TZ)" "images: dependency wheels" "$(( $(date +%s) - TB ))" >> "$TIMES"
  find "$IMAGES_DIR" -maxdepth 1 -name 'wheels-*' ! -name "$(basename "$DEPS")" -exec rm -rf {} +
fi

# ------------------------------------------------------------------ agents / emulator
# /opt/venv is created in an overlay over the base rootfs, so the base stays untouched and
# the overlay's upper directory holds exactly the new layer.
build_project_image() {  # FLAVOUR REF REQUIREMENT CONFIG_JSON
  local flavour=$1 ref=$2 req=$3 cfg=$4 key tb d pipwhl
  key=$(sha <<<"$BASE_KEY $CON_HASH $WHEEL_HASH $VENV_RECIPE $flavour")
  if keyed "$flavour" "$key"; then log "$flavour: cached ($ref)"; return 0; fi
  tb=$(date +%s)
  log "$flavour: /opt/venv with $req (log: $LC_LOGS/venv-$flavour.log)"
  d="$WORK/$flavour"; mkdir -p "$d/upper" "$d/ovl" "$d/merged"
  mount -t overlay overlay -o "lowerdir=$BASE/rootfs,upperdir=$d/upper,workdir=$d/ovl" "$d/merged"
  MOUNTED+=("$d/merged")
  mkdir -p "$d/merged/tmp/build/wheels"
  cp "$WHEEL" "$d/merged/tmp/build/"
  cp "$DEPS"/*.whl "$d/merged/tmp/build/wheels/"
  cp "$CONSTRAINTS" "$d/merged/tmp/build/constraints.txt"
  pipwhl=$(cd "$DEPS" && ls pip-*.whl)
  # As in the Dockerfile: a venv without pip; a pip from outside the venv installs into it.
  if ! chroot "$d/merged" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp PYTHONDONTWRITEBYTECODE=1 \
        PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_CONSTRAINT=/tmp/build/constraints.txt \
        sh -ec "python3 -m venv --without-pip /opt/venv
                /opt/venv/bin/python /tmp/build/wheels/$pipwhl/pip install -q --no-index --find-links /tmp/build/wheels \
                  '/tmp/build/$(basename "$WHEEL")$req'
                /opt/venv/bin/qpu-k8s --help >/dev/null" >"$LC_LOGS/venv-$flavour.log" 2>&1; then
    tail -n 20 "$LC_LOGS/venv-$flavour.log" >&2; die "installing $flavour into /opt/venv failed"
  fi
  umount "$d/merged"; MOUNTED=()
  [ -d "$d/upper/opt/venv/bin" ] || die "no /opt/venv in the $flavour layer"
  layer_tar "$d/upper" "$d/venv-layer.tar" opt
  image_tar "$IMAGES_DIR/$flavour.tar" "$ref" "$cfg" "$BASE/layer.tar" "$d/venv-layer.tar"
  rm -rf "$d"
  printf '%s %-28s %4ss\n' "$(date -u +%FT%TZ)" "images: $flavour" "$(( $(date +%s) - tb ))" >> "$TIMES"
  done_image "$flavour" "$key" "$ref, $(( $(date +%s) - tb ))s"
}

# The runtime stage's settings (Dockerfile `runtime`, `agents`, `emulator`).
ENV_JSON='["PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LANG=C.UTF-8","PYTHONDONTWRITEBYTECODE=1","PYTHONUNBUFFERED=1","HOME=/tmp"]'
build_project_image agents "$AGENTS_IMAGE" "" \
  "{\"Env\":$ENV_JSON,\"WorkingDir\":\"/tmp\",\"User\":\"65532:65532\",\"Entrypoint\":[\"qpu-k8s\"],\"Cmd\":[\"--help\"],
    \"Labels\":{\"org.opencontainers.image.title\":\"qpu-k8s\",\"org.opencontainers.image.licenses\":\"Apache-2.0\"}}"
build_project_image emulator "$EMULATOR_IMAGE" "[emulator]" \
  "{\"Env\":$ENV_JSON,\"WorkingDir\":\"/tmp\",\"User\":\"65532:65532\",\"Entrypoint\":[\"qpu-k8s\"],
    \"Cmd\":[\"emulator\",\"--host=0.0.0.0\",\"--port=8080\"],\"ExposedPorts\":{\"8080/tcp\":{}},
    \"Labels\":{\"org.opencontainers.image.title\":\"qpu-k8s-emulator\",\"org.opencontainers.image.licenses\":\"Apache-2.0\"}}"

log "images done in $(( $(date +%s) - T0 ))s: $(cd "$IMAGES_DIR" && du -h ./*.tar | awk '{printf "%s %s, ", $2, $1}')"
