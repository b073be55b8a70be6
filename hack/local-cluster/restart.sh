#!/usr/bin/env bash
# Restart one component of the running cluster (e.g. `restart.sh kubelet`) with the command
# line up.sh started it with: SIGTERM, wait until it is gone, start it again (its log is
# appended to). For fault tests such as "the kubelet restarts while a DRA driver runs".
#
# Usage: restart.sh COMPONENT [--kill]   (--kill: SIGKILL instead of SIGTERM)
set -Eeuo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LC_TAG=restart
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$HERE/lib.sh"
need_root
name=${1:-}; sig=TERM
[ "${2:-}" = --kill ] && sig=KILL
argv="$RUN_DIR/state/$name.argv"; pidf="$RUN_DIR/pids/$name.pid"
[ -n "$name" ] && [ -f "$argv" ] && [ -f "$pidf" ] \
  || die "usage: restart.sh COMPONENT [--kill]; known: $(find "$RUN_DIR/state" -name "*.argv" -printf "%f " 2>/dev/null | sed "s/\.argv//g")"
pid=$(cat "$pidf")
if pid_running "$pid"; then
  kill "-$sig" "$pid"
  deadline=$(( $(date +%s) + 30 ))
  while pid_running "$pid"; do
    [ "$(date +%s)" -lt "$deadline" ] || { kill -KILL "$pid" 2>/dev/null || true; }
    sleep 0.1
  done
fi
mapfile -d '' cmd < "$argv"
printf '\n===== restarted by restart.sh at %s =====\n' "$(date -u +%FT%TZ)" >> "$RUN_DIR/logs/$name.log"
setsid "${cmd[@]}" </dev/null >>"$RUN_DIR/logs/$name.log" 2>&1 &
echo "$!" > "$pidf"
log "$name restarted (pid $!, was $pid, signal $sig)"
