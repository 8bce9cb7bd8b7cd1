#!/usr/bin/env bash
# Tenant-by-tenant migration: routes by header, one tenant moved at a time by editing its
# route, the others untouched.
cd "$(dirname "$0")" && . ../lib.sh

upstream old 1
upstream new 2
start_proxy

tenants() {
  for t in acme globex initech; do
    printf '%-8s -> %s\n' "$t" "$(curl -s -H "x-tenant: $t" "$PROXY/" | head -1)"
  done
}

say "acme is already on the new system; globex and everyone else are on the old one"
out=$(tenants); echo "$out"
expect "acme     -> new" "$out"; expect "globex   -> old" "$out"; expect "initech  -> old" "$out"

say "moving globex: what would change (switchyard diff), then the edit"
sed '/name = "tenant-globex"/,/split/ s/split = { old = 100, new = 0 }/split = { old = 0, new = 100 }/' "$CONFIG" > "$work/next.toml"
"$SY" diff "$CONFIG" "$work/next.toml"
edit '/name = "tenant-globex"/,/split/ s/split = { old = 100, new = 0 }/split = { old = 0, new = 100 }/'
out=$(tenants); echo "$out"
expect "acme     -> new" "$out"; expect "globex   -> new" "$out"; expect "initech  -> old" "$out"

say "globex has a problem: back to the old system in one edit; nobody else moves"
edit '/name = "tenant-globex"/,/split/ s/split = { old = 0, new = 100 }/split = { old = 100, new = 0 }/'
out=$(tenants); echo "$out"
expect "acme     -> new" "$out"; expect "globex   -> old" "$out"
finished
