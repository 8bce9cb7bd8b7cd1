#!/usr/bin/env bash
# How many mirrored copies the in-flight limit drops on the peer job with every request
# mirrored to a shadow as fast as the primary (switchyard-mirror.toml: the shadow pool is the
# canary's upstream), for each max_in_flight given. Reads switchyard_mirror_total from the
# config's admin API (127.0.0.1:18099) while ../shared/bench/peerbench.py drives the load.
# From the repository root, after `cargo build --release` and `peerbench.py --install`:
#   bash benches/peer/mirror-drops.sh 64 128 256
# The figures in docs/mirroring.md ("Sizing max_in_flight") were taken this way.
set -euo pipefail
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
for limit in "${@:-128}"; do
  config="$work/mirror-$limit.toml"
  sed "s/compare = true }/compare = true, max_in_flight = $limit }/" benches/peer/switchyard-mirror.toml >"$config"
  # The last counts the admin API gave before the proxy stopped.
  (while true; do
    curl -s -m 1 127.0.0.1:18099/metrics 2>/dev/null | grep '^switchyard_mirror_total' >"$work/now" &&
      [ -s "$work/now" ] && cp "$work/now" "$work/last"
    sleep 0.5
  done) &
  poller=$!
  rm -f "$work/last"
  python3 ../shared/bench/peerbench.py --only switchyard --rounds 1 --seconds 8 --no-direct \
    --ours "target/release/switchyard run --config $config --workers 1" | grep '^switchyard '
  kill "$poller"
  copies=$(awk '{n += $2} END {print n}' "$work/last")
  dropped=$(awk '/result="dropped"/ {print $2}' "$work/last")
  echo "max_in_flight $limit: $dropped of $copies copies dropped"
done
