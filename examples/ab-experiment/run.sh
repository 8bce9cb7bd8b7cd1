#!/usr/bin/env bash
# An A/B experiment: 400 users visit the shop; the treatment's checkout converts 30% of its
# users, the control's 10% (the simulated users decide from the variant the application got).
# The proxy counts exposures and conversions per arm and says whether the difference is real.
cd "$(dirname "$0")" && . ../lib.sh

upstream shop 1
start_proxy

say "400 users visit; some complete a checkout (treatment: 3 in 10, control: 1 in 10)"
for i in $(seq 1 400); do
  variant=$(curl -s -H "x-user-id: user-$i" "$PROXY/" | grep -o 'checkout_ab=[a-z]*' | cut -d= -f2 || true)
  case $variant in
    treatment) converts=$(( i % 10 < 3 )) ;;
    control) converts=$(( i % 10 < 1 )) ;;
    *) echo "user-$i got no variant"; exit 1 ;;
  esac
  if [ "$converts" = 1 ]; then
    curl -s -o /dev/null -X POST -H "x-user-id: user-$i" "$PROXY/checkout/complete"
  fi
done

say "the results: users, conversions, rates with intervals, the difference and its p-value"
out=$("$SY" experiments --admin "$ADMIN"); echo "$out"
expect "control" "$out"
expect "treatment" "$out"
expect "consistent with the weights" "$out"
# The treatment's rate is about 30%, the control's about 10%, and the difference is significant.
p=$(grep -E '^  treatment' <<<"$out" | awk '{print $NF}')
awk -v p="$p" 'BEGIN { exit !(p < 0.001) }' || { echo "expected a p-value below 0.001, got $p"; exit 1; }
finished
