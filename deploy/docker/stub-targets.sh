#!/bin/sh
# The dependency stage of the Dockerfile: every target Cargo.toml declares, as an empty stub,
# so that `cargo build` compiles the dependencies alone (and Docker keeps them in a layer that
# a change to the sources does not invalidate). The list comes from Cargo.toml itself, so a
# bench added there can never be missing here.
set -eu
mkdir -p src benches
echo 'fn main() {}' > src/main.rs
: > src/lib.rs
awk '/^\[\[bench\]\]/ { bench = 1; next } /^\[/ { bench = 0 } bench && /^name *=/ { gsub(/^name *= *"|"$/, ""); print }' Cargo.toml |
    while read -r name; do
        echo 'fn main() {}' > "benches/$name.rs"
    done
