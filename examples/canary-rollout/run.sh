#!/usr/bin/env bash
# A canary rollout under a guard: steps advance while the canary is healthy; when it starts
# failing, the guard aborts the rollout by itself and its users go back to blue.
cd "$(dirname "$0")" && . ../lib.sh

upstream blue 1
upstream canary 2
start_proxy
background_traffic

say "the rollout starts at its first step: 10% of users on the canary"
wait_for "step 1 of 3 (10%)" 10

say "the canary is healthy: the rollout advances to 50%"
wait_for "step 2 of 3 (50%)" 20

say "the canary starts failing half its requests"
curl -s -X POST "http://127.0.0.1:$((UPSTREAM_PORT + 1))/_demo/fail?percent=50"

say "the guard trips: the rollout is aborted and every canary user is back on blue"
wait_for "TRIPPED canary" 20
out=$(traffic 20); echo "$out"; expect "20 blue" "$out"

say "fixed: heal the canary and reset the route; the rollout starts again from 10%"
curl -s -X POST "http://127.0.0.1:$((UPSTREAM_PORT + 1))/_demo/fail?percent=0"
"$SY" reset web --admin "$ADMIN"
wait_for "step 1 of 3 (10%)" 10
finished
