# Shared by the examples' run.sh scripts: finds the switchyard binary, starts stand-in upstreams
# (`switchyard echo`) and the proxy on a copy of the example's config, sends traffic, and stops
# everything on exit. Ports: PROXY_PORT (8080), ADMIN_PORT (9901), UPSTREAM_PORT (7001, then
# 7002, 7003 for the second and third upstream). PACE=fast shortens the pauses (the tests use it).
# `run.sh --hold` keeps everything up after the checks, with the dashboard's address printed,
# until Ctrl-C.
set -euo pipefail

HOLD=0
for arg in "$@"; do
  case $arg in
    --hold) HOLD=1 ;;
    *) echo "usage: run.sh [--hold]"; exit 2 ;;
  esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SY=${SWITCHYARD:-}
if [ -z "$SY" ]; then
  for candidate in "$root/target/release/switchyard" "$root/target/debug/switchyard"; do
    if [ -x "$candidate" ]; then SY=$candidate; break; fi
  done
fi
if [ -z "$SY" ]; then
  echo "building switchyard (cargo build --release)…"
  (cd "$root" && cargo build --release --quiet)
  SY="$root/target/release/switchyard"
fi
PROXY_PORT=${PROXY_PORT:-8080}
ADMIN_PORT=${ADMIN_PORT:-9901}
UPSTREAM_PORT=${UPSTREAM_PORT:-7001}
PROXY="http://127.0.0.1:$PROXY_PORT"
ADMIN="http://127.0.0.1:$ADMIN_PORT"
work=$(mktemp -d)
CONFIG="$work/switchyard.toml"
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # Up to 5 s for them to finish (the proxy drains); then they are stopped.
  for _ in $(seq 50); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

pause() {
  if [ "${PACE:-}" = fast ]; then sleep "${2:-0.3}"; else sleep "$1"; fi
}

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# upstream NAME N: a stand-in upstream answering with NAME on port UPSTREAM_PORT+N-1.
upstream() {
  "$SY" echo "$1" --listen "127.0.0.1:$((UPSTREAM_PORT + $2 - 1))" >/dev/null &
  pids+=($!)
}

# The example's config.toml with its ports moved to the ones chosen, then the proxy on it.
start_proxy() {
  sed -e "s/127\.0\.0\.1:8080/127.0.0.1:$PROXY_PORT/g" \
      -e "s/127\.0\.0\.1:9901/127.0.0.1:$ADMIN_PORT/g" \
      -e "s/127\.0\.0\.1:7001/127.0.0.1:$UPSTREAM_PORT/g" \
      -e "s/127\.0\.0\.1:7002/127.0.0.1:$((UPSTREAM_PORT + 1))/g" \
      -e "s/127\.0\.0\.1:7003/127.0.0.1:$((UPSTREAM_PORT + 2))/g" \
      config.toml > "$CONFIG"
  "$SY" check -c "$CONFIG" >/dev/null
  "$SY" run -c "$CONFIG" 2>"$work/proxy.log" &
  pids+=($!)
  for _ in $(seq 100); do
    if "$SY" healthcheck --admin "$ADMIN" >/dev/null 2>&1; then
      echo "switchyard is up: proxy $PROXY, dashboard $ADMIN/"
      return
    fi
    sleep 0.1
  done
  echo "the proxy did not start:"; cat "$work/proxy.log"; exit 1
}

revision() { curl -s "$ADMIN/api/config" | grep -o '"revision":"[^"]*"' | head -1; }

# edit SED-EXPRESSION: changes the running config file as an operator would, and waits until
# the proxy has reloaded it.
edit() {
  local before
  before=$(revision)
  sed -i -e "$1" "$CONFIG"
  for _ in $(seq 100); do
    if [ "$(revision)" != "$before" ]; then echo "reloaded: $(revision)"; return; fi
    sleep 0.1
  done
  echo "the proxy did not reload:"; tail -5 "$work/proxy.log"; exit 1
}

# traffic N [PATH] [HEADER]: N requests from users user-1..user-N; prints how many each pool
# answered.
traffic() {
  local n=$1 path=${2:-/} header=${3:-x-unused: 1}
  for i in $(seq 1 "$n"); do
    curl -s -H "x-user-id: user-$i" -H "$header" "$PROXY$path" | head -1
  done | sort | uniq -c
}

# expect TEXT OUTPUT: fails the example when OUTPUT does not contain TEXT.
expect() {
  if ! grep -q -- "$1" <<<"$2"; then
    echo "expected \"$1\" in:"; echo "$2"; exit 1
  fi
}

# background_traffic [PATH]: requests from random users, continuously, until the script ends.
background_traffic() {
  local path=${1:-/}
  while true; do
    curl -s -o /dev/null -H "x-user-id: user-$RANDOM" "$PROXY$path" || sleep 0.1
  done &
  pids+=($!)
}

# wait_for TEXT SECONDS: waits until `switchyard status` shows TEXT; prints the status.
wait_for() {
  local out=""
  for _ in $(seq $(($2 * 5))); do
    out=$("$SY" status --admin "$ADMIN" 2>&1 || true)
    if grep -q -- "$1" <<<"$out"; then echo "$out"; return; fi
    sleep 0.2
  done
  echo "waited $2 s for \"$1\"; status said:"; echo "$out"; exit 1
}

# finished: the example's checks passed. With --hold, stays up (the proxy, the upstreams, any
# background traffic) until interrupted; everything stops on the way out.
finished() {
  echo; echo "done."
  if [ "$HOLD" = 1 ]; then
    trap 'exit 0' INT TERM
    echo "holding: proxy $PROXY, dashboard $ADMIN/ (Ctrl-C stops everything)"
    while true; do
      sleep 3600 &
      pids+=($!)
      wait $! || true
    done
  fi
}
