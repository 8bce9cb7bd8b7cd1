#!/usr/bin/env bash
# Blue/green switch: test green through an override, switch every user to it with one edit,
# see what moved, and switch back.
cd "$(dirname "$0")" && . ../lib.sh

upstream blue 1
upstream green 2
start_proxy

say "before the switch: every user on blue"
out=$(traffic 20); echo "$out"; expect "20 blue" "$out"

say "a tester reaches green before anyone else (x-switchyard-pool: green)"
out=$(curl -s -H 'x-switchyard-pool: green' "$PROXY/"); echo "$out"; expect "green" "$out"

say "what the switch would move (switchyard diff)"
sed 's/split = { blue = 100, green = 0 }/split = { blue = 0, green = 100 }/' "$CONFIG" > "$work/next.toml"
"$SY" diff "$CONFIG" "$work/next.toml"

say "the switch: one edit of the file, applied without a restart"
edit 's/split = { blue = 100, green = 0 }/split = { blue = 0, green = 100 }/'
out=$(traffic 20); echo "$out"; expect "20 green" "$out"

say "and back, as fast"
edit 's/split = { blue = 0, green = 100 }/split = { blue = 100, green = 0 }/'
out=$(traffic 20); echo "$out"; expect "20 blue" "$out"
finished
