#!/usr/bin/env bash
# Blue/green with sessions: users in the middle of a session stay on blue through the switch,
# new users go to green, and blue drains as its sessions end.
cd "$(dirname "$0")" && . ../lib.sh
# The secret that signs the pins (the same on every replica in production).
export SWITCHYARD_SESSION_SECRET=${SWITCHYARD_SESSION_SECRET:-example-secret-$RANDOM-$RANDOM-$RANDOM}

upstream blue 1
upstream green 2
start_proxy

# visit USER...: one request from each user, with a cookie jar each (as a browser keeps).
visit() {
  for u in "$@"; do
    curl -s -b "$work/$u.jar" -c "$work/$u.jar" "$PROXY/" | head -1
  done | sort | uniq -c
}

say "five users begin their sessions: all on blue"
out=$(visit a b c d e); echo "$out"; expect "5 blue" "$out"

say "what the switch does to them (switchyard diff)"
sed 's/split = { blue = 100, green = 0 }/split = { blue = 0, green = 100 }/' "$CONFIG" > "$work/next.toml"
"$SY" diff "$CONFIG" "$work/next.toml"

say "the switch: green takes every new session"
edit 's/split = { blue = 100, green = 0 }/split = { blue = 0, green = 100 }/'
out=$(visit a b c d e); echo "$out"; expect "5 blue" "$out"
echo "(the five are mid-session: they stay on blue)"
out=$(visit f g h); echo "$out"; expect "3 green" "$out"

say "blue drains: it has live sessions"
wait_for "session blue .* pins may last" 5

say "the five go quiet for longer than idle (3s, and its 1s slack): their pins lapse"
sleep 4.5
wait_for "session blue .* no session left" 5
out=$(visit a b c d e); echo "$out"; expect "5 green" "$out"
finished
