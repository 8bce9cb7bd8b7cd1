#!/usr/bin/env bash
# Targeting: the Nordics and the beta testers reach the new search service (canary) and its
# search box; everybody else stays on blue. `switchyard explain` says which rule decided.
cd "$(dirname "$0")" && . ../lib.sh

upstream blue 1
upstream canary 2
start_proxy

say "100 users elsewhere: all on blue"
out=$(traffic 100 / "x-country: US"); echo "$out"; expect "100 blue" "$out"

say "100 users in Sweden: all on the canary (the nordics segment)"
out=$(traffic 100 / "x-country: SE"); echo "$out"; expect "100 canary" "$out"

say "a beta tester in the US (cookie plan=beta): the canary too"
out=$(curl -s -H "x-user-id: user-7" -H "x-country: US" --cookie "plan=beta" "$PROXY/"); echo "$out"
expect "canary" "$out"

say "the search box: on in Finland with app 2.5.0, off with app 2.3.0, off in the US"
on=$(curl -s -H "x-user-id: user-8" -H "x-country: FI" "$PROXY/?v=2.5.0" | grep -o 'new_search_box=[a-z]*' || true)
old=$(curl -s -H "x-user-id: user-8" -H "x-country: FI" "$PROXY/?v=2.3.0" | grep -o 'new_search_box=[a-z]*' || true)
us=$(curl -s -H "x-user-id: user-9" -H "x-country: US" "$PROXY/?v=2.5.0" | grep -o 'new_search_box=[a-z]*' || true)
echo "Finland, 2.5.0: $on; Finland, 2.3.0: $old; US, 2.5.0: $us"
[ "$on" = new_search_box=on ] && [ "$old" = new_search_box=off ] && [ "$us" = new_search_box=off ] \
  || { echo "unexpected flag values"; exit 1; }

say "why: switchyard explain names the rule and the strategy"
out=$("$SY" explain -c "$CONFIG" --user user-8 -H "x-country: FI" "$PROXY/?v=2.5.0")
echo "$out" | grep -iE 'pool|new_search_box'
expect "nordics" "$out"
finished
