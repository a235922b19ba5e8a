#!/usr/bin/env bash
# Instructions per request (issue #23): the gateway under
# `valgrind --tool=callgrind` serves a fixed number of requests of each kind
# on one keep-alive connection, with instrumentation switched on only around them;
# the report gives instructions (Ir) per request and the top functions
# (inclusive and self). Unlike requests/s, instruction counts do not depend on
# what else the machine is doing, so a before/after comparison is meaningful
# on a shared or busy machine.
#
#   loadtests/callgrind.sh                              # N=2000 of each case
#   BIN=/tmp/gateway-old BUILD=0 loadtests/callgrind.sh  # another binary
#   CASES="hit1k pass1k" N=500 loadtests/callgrind.sh
#
# Cases: hit1k (1 KiB cache hit), hit64k (64 KiB cache hit), pass1k (1 KiB
# pass-through, no cache, upstream keep-alive). The origin is a tiny nginx.
# Callgrind files and annotations go to target/loadtests/callgrind-<case>.*
# Only 127.0.0.1 is used; everything started is stopped by PID.
set -euo pipefail
[ -n "${TRACE:-}" ] && set -x
cd "$(dirname "$0")/.."
source scripts/lib.sh

N=${N:-2000}
CASES=${CASES:-hit1k hit64k pass1k}
BIN=${BIN:-target/release/gateway}
TOP=${TOP:-25}
out=target/loadtests
mkdir -p "$out"

ensure_bench_tools valgrind:valgrind
if [ "${BUILD:-1}" = 1 ]; then
  ensure_system_deps
  cargo build --release --locked -p gateway >/dev/null
fi
[ -x "$BIN" ] || die "no gateway binary at $BIN"

ORIGIN=$(pick); GW_PORT=$(pick); GW_ADMIN=$(pick)
dir=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$dir"; }
trap cleanup EXIT

mkdir -p "$dir/www/c" "$dir/www/p" "$dir/origin"
head -c 1024 /dev/zero | tr '\0' 'a' > "$dir/www/c/1k"
head -c 65536 /dev/zero | tr '\0' 'b' > "$dir/www/c/64k"
cp "$dir/www/c/1k" "$dir/www/p/1k"
chmod -R a+rwX "$dir"
cat > "$dir/origin/nginx.conf" <<CONF
worker_processes 1; error_log $dir/origin/error.log warn; pid $dir/origin/pid;
events { worker_connections 1024; }
http { access_log off; $(nginx_temp "$dir/origin") keepalive_requests 1000000;
  server { listen 127.0.0.1:$ORIGIN; root $dir/www; etag off;
    location /c/ { add_header Cache-Control "max-age=3600"; }
    location /p/ { add_header Cache-Control "no-store"; } } }
CONF
"$NGINX" -p "$dir/origin" -c "$dir/origin/nginx.conf" -g 'daemon off;' & pids+=($!)
cat > "$dir/gateway.yaml" <<YAML
listen: "127.0.0.1:$GW_PORT"
threads: 1
pid_file: $dir/gateway.pid
upgrade_sock: $dir/upgrade.sock
admin: { listen: "127.0.0.1:$GW_ADMIN" }
access_log: { enabled: false }
cache: { max_size: 64MiB, max_object_size: 8MiB }
upstreams: { origin: { servers: ["127.0.0.1:$ORIGIN"] } }
routes:
  - { name: cached, match: { path_prefix: /c/ }, upstream: origin, cache: { enabled: true } }
  - { name: pass, match: { path_prefix: / }, upstream: origin }
YAML
RUST_LOG=error valgrind --tool=callgrind --instr-atstart=no --trace-children=no \
  --callgrind-out-file="$dir/cg.%p" "$BIN" -c "$dir/gateway.yaml" 2>"$dir/gateway.log" & pids+=($!)
GW_PID=$!
wait_http "http://127.0.0.1:$ORIGIN/c/1k" 20 || die "origin did not come up"
wait_http "http://127.0.0.1:$GW_ADMIN/ready" 180 || die "gateway did not come up under valgrind"

# N GET requests of one path on one keep-alive connection; checks every answer.
client() { # path count
  python3 - "$GW_PORT" "$1" "$2" <<'PY'
import http.client, sys
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for _ in range(n):
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit(f"{path}: status {r.status}")
PY
}
cgc() { callgrind_control "$@" "$GW_PID" >/dev/null 2>&1; }
declare -A paths=([hit1k]=/c/1k [hit64k]=/c/64k [pass1k]=/p/1k)
echo "gateway $BIN under callgrind, $N requests per case on one keep-alive connection"
echo "| case | requests | instructions (Ir) | Ir per request |"
echo "|---|---|---|---|"
for case in $CASES; do
  path=${paths[$case]}
  client "$path" 20     # warm: fill the cache, open the upstream connection
  cgc -i on; cgc -z
  client "$path" "$N"
  cgc -d "$case"; cgc -i off
  f=$(ls -t "$dir"/cg.* | head -1)
  cp "$f" "$out/callgrind-$case.out"
  callgrind_annotate --threshold=100 "$f" >"$dir/self.txt" 2>/dev/null
  callgrind_annotate --inclusive=yes --threshold=100 "$f" >"$dir/incl.txt" 2>/dev/null
  head -$((TOP + 25)) "$dir/self.txt" >"$out/callgrind-$case.self.txt"
  head -$((TOP + 25)) "$dir/incl.txt" >"$out/callgrind-$case.inclusive.txt"
  total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$dir/self.txt")
  [ -n "$total" ] || die "no totals in $f"
  printf '| %s | %s | %s | %s |\n' "$case" "$N" "$total" "$((total / N))"
done
echo "top functions: $out/callgrind-<case>.{inclusive,self}.txt (callgrind_annotate)"
