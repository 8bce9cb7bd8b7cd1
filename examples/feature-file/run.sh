#!/usr/bin/env bash
# Flags from an Unleash feature file: a 25% rollout and a variant with a payload for Sweden; the
# file changes (the rollout goes to 100%) and the proxy follows; a broken file changes nothing.
cd "$(dirname "$0")" && . ../lib.sh

upstream shop 1
cp features.json "$work/features.json"
FEATURES="$work/features.json"
start_proxy

# on_for N: how many of users 1..N get new-checkout=on.
on_for() {
  for i in $(seq 1 "$1"); do
    curl -s -H "x-user-id: user-$i" "$PROXY/" | grep -o 'new-checkout=on' || true
  done | wc -l
}

say "new-checkout is rolled out to 25% of users: of 200, how many have it"
n=$(on_for 200); echo "$n of 200"
[ "$n" -ge 30 ] && [ "$n" -le 70 ] || { echo "expected about 50"; exit 1; }

say "a user in Sweden gets the summer banner and its payload"
out=$(curl -s -H "x-user-id: user-1" -H "x-country: SE" "$PROXY/"); echo "$out"
expect "banner=summer" "$out"
expect 'banner="Sommarrea!";type=string' "$out"

say "the file changes (the rollout goes to 100%): within a second every user has it"
sed -i 's/"rollout": "25"/"rollout": "100"/' "$FEATURES"
for _ in $(seq 50); do n=$(on_for 20); [ "$n" -eq 20 ] && break; sleep 0.1; done
echo "$n of 20"; [ "$n" -eq 20 ] || { echo "the proxy did not pick up the new file"; exit 1; }

say "a broken file (cut short) changes nothing: the flags stay, the error is shown"
cp "$FEATURES" "$work/good.json"
head -c 200 "$work/good.json" > "$FEATURES"
for _ in $(seq 50); do
  err=$(curl -s "$ADMIN/api/config" | grep -o '"last_error":{[^}]*' || true)
  [ -n "$err" ] && break; sleep 0.1
done
echo "${err:0:300}"; expect "features.json: not an Unleash client API document" "$err"
n=$(on_for 20); echo "still $n of 20"; [ "$n" -eq 20 ] || exit 1
cp "$work/good.json" "$FEATURES"
finished
