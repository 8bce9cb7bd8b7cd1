#!/usr/bin/env bash
# An A/B flag: variants assigned per user, sticky, sent to the application in a header, and
# counted by the proxy.
cd "$(dirname "$0")" && . ../lib.sh

upstream shop 1
start_proxy

say "200 users: how many got each variant (the header the application receives)"
out=$(for i in $(seq 1 200); do
  curl -s -H "x-user-id: user-$i" "$PROXY/" | grep -o 'checkout_ab=[a-z]*'
done | sort | uniq -c)
echo "$out"
for v in control treatment; do
  n=$(grep "checkout_ab=$v" <<<"$out" | awk '{print $1}')
  if [ -z "$n" ] || [ "$n" -lt 70 ] || [ "$n" -gt 130 ]; then echo "expected about 100 users on $v, got ${n:-0}"; exit 1; fi
done

say "sticky: user-7 gets the same variant every time"
out=$(for _ in 1 2 3 4 5; do curl -s -H "x-user-id: user-7" "$PROXY/" | grep -o 'checkout_ab=[a-z]*'; done | sort -u)
echo "$out"
[ "$(wc -l <<<"$out")" -eq 1 ] || { echo "user-7 changed variant"; exit 1; }

say "why: switchyard explain for user-7 and for the QA account"
"$SY" explain -c "$CONFIG" --user user-7 "$PROXY/" | grep -E 'checkout_ab|dark_mode'
out=$("$SY" explain -c "$CONFIG" --user qa-1 "$PROXY/")
echo "$out" | grep -E 'dark_mode'
expect "dark_mode" "$out"

say "the proxy's counts (GET /api/flags; also switchyard_flag_decisions_total in /metrics)"
curl -s "$ADMIN/api/flags"; echo
finished
