#!/usr/bin/env bash
# A parallel run: users are served by v1 only; v2 gets a copy of every request and its answers
# are compared with v1's. v2 agrees at first; then it starts failing some requests, and the
# proxy shows the differences while no user sees them.
cd "$(dirname "$0")" && . ../lib.sh

upstream shop 1      # v1, the version users get
upstream shop 2      # v2, the new build: it answers as v1 does
start_proxy

mirror() { curl -s "$ADMIN/api/routes/shop"; }
# compared: the copies whose answers were compared so far.
compared() { mirror | grep -o '"counts":\[[^]]*\]' | grep -o '"match",[0-9]*' | cut -d, -f2; }

say "100 users: every answer comes from v1"
out=$(traffic 100); echo "$out"; expect "100 shop" "$out"

say "v2 got a copy of each, and agreed every time"
for _ in $(seq 50); do c=$(compared); [ "${c:-0}" -ge 100 ] && break; sleep 0.1; done
out=$("$SY" status --admin "$ADMIN" | grep "mirrors"); echo "$out"
expect "mismatch rate 0.00%" "$out"

say "v2 regresses: it starts answering 500 to a third of its requests"
curl -s -X POST "http://127.0.0.1:$((UPSTREAM_PORT + 1))/_demo/fail?percent=33"

say "users do not notice: 100 more requests, all 200 from v1"
codes=$(for i in $(seq 101 200); do curl -s -o /dev/null -w '%{http_code}\n' -H "x-user-id: user-$i" "$PROXY/"; done | sort | uniq -c)
echo "$codes"; expect "100 200" "$codes"

say "the proxy does: the mismatch rate, and the last differences (status 200 against 500)"
for _ in $(seq 50); do
  out=$("$SY" status --admin "$ADMIN" | grep "mirrors")
  grep -q "mismatch rate 0.00%" <<<"$out" || break
  sleep 0.1
done
echo "$out"
expect "mismatch rate" "$out"
mirror | grep -o '"recent":\[{[^}]*}' | head -c 400; echo
expect '"kind":"status"' "$(mirror)"
finished
