#!/usr/bin/env bash
# What a proxy in the peer job costs the processes on the other core, the upstream nginx and
# wrk (the headers it adds are theirs to parse): runs one of them under callgrind, puts the
# proxy between them, drives 8 s of peerbench's load, and prints that process's instructions
# per request. Not run by CI (it needs valgrind, nginx and wrk: apt-get install valgrind
# nginx-light wrk). From the repository root, after `cargo build --release`:
#   bash benches/peer/other-core-instructions.sh benches/peer/switchyard.toml [upstream|wrk]
#   bash benches/peer/other-core-instructions.sh benches/peer/switchyard-all-headers.toml
#   bash benches/peer/other-core-instructions.sh nginx [upstream|wrk]  # peerbench's nginx
# The figures in the README (Performance) were taken this way.
set -euo pipefail
target=${1:?usage: other-core-instructions.sh CONFIG.toml|nginx [upstream|wrk]}
measure=${2:-upstream}
case $measure in upstream | wrk) ;; *) echo "measure upstream or wrk, not $measure" >&2; exit 2 ;; esac
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

cat >"$work/upstream.conf" <<EOF
worker_processes 1; master_process off; daemon off;
pid $work/upstream.pid; error_log $work/upstream-error.log warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:19001; location / { return 200 "stable\n"; } }
  server { listen 127.0.0.1:19002; location / { return 200 "canary\n"; } }
}
EOF
# peerbench.py's nginx, as it writes it.
cat >"$work/proxy.conf" <<EOF
worker_processes 1; daemon off;
pid $work/proxy.pid; error_log $work/proxy-error.log warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 1000000;
  split_clients "\${http_x_user_id}" \$pool { 90% stable; * canary; }
  upstream stable { server 127.0.0.1:19001; keepalive 128; }
  upstream canary { server 127.0.0.1:19002; keepalive 128; }
  server {
    listen 127.0.0.1:18080;
    location / {
      proxy_pass http://\$pool; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header x-flags "new_checkout=on";
    }
  }
}
EOF
cat >"$work/wrk.lua" <<'EOF'
math.randomseed(12345)
request = function()
  wrk.headers["x-user-id"] = "user-" .. math.random(1, 100000)
  return wrk.format(nil)
end
EOF

under() { [ "$measure" = "$1" ] && echo valgrind --tool=callgrind --callgrind-out-file="$work/cg.out"; true; }
$(under upstream) nginx -c "$work/upstream.conf" >"$work/upstream.log" 2>&1 &
upstream=$!
sleep 3
if [ "$target" = nginx ]; then
  nginx -c "$work/proxy.conf" &
else
  target/release/switchyard run --config "$target" --workers 1 >"$work/proxy.log" 2>&1 &
fi
proxy=$!
sleep 1
requests=$($(under wrk) wrk -t1 -c8 -d8s -s "$work/wrk.lua" http://127.0.0.1:18080/ 2>"$work/wrk.log" |
  awk '/requests in/ {print $1}')
kill "$proxy"; wait "$proxy" 2>/dev/null || true
kill -QUIT "$upstream"; wait "$upstream" 2>/dev/null || true
total=$(callgrind_annotate "$work/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$target: $requests requests, $measure $((total / requests)) instructions per request; its top functions:"
callgrind_annotate "$work/cg.out" 2>/dev/null | grep -E '^ *[0-9,]+ \([ 0-9.]+%\) ' | grep -v 'PROGRAM TOTALS' |
  head -5 | awk -v r="$requests" '{n = $1; gsub(",", "", n); sub(/^ *[0-9,]+ \([ 0-9.]+%\) +/, ""); printf "%8d  %s\n", n / r, $0}'
