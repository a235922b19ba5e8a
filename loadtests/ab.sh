#!/usr/bin/env bash
# Before/after on one harness: two gateway builds and nginx proxy_cache take
# turns on the same URL, round after round, so that a drift in the machine's
# speed (this VM's moves by tens of percent within minutes) hits all three
# alike. Same setup as loadtests/cache.sh: each proxy pinned to core 0 with one
# worker/thread, wrk and the origin (a tiny nginx) on core 1. The gateway is
# restarted for each run and its cache warmed first; every run checks it hits.
#
#   A=/tmp/gateway-before B=target/release/gateway loadtests/ab.sh
#   CASES="/1k:64 /64k:64 /1k:2000" ROUNDS=5 DURATION=8s   # the defaults
#
# Prints one line per run and, at the end, the median of each case and target:
# requests/s and the CPU each request cost the serving process, user (the
# proxy's own work) and system (the kernel's socket work) apart.
set -euo pipefail
[ -n "${TRACE:-}" ] && set -x
cd "$(dirname "$0")/.."
source scripts/lib.sh

A=${A:?A=<gateway binary, before>}; B=${B:?B=<gateway binary, after>}
CASES=${CASES:-/1k:64 /64k:64 /1k:2000}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8s}
ensure_bench_tools
[ -x "$A" ] && [ -x "$B" ] || die "A and B must be gateway binaries"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

ORIGIN=$(pick); NGINX_PORT=$(pick); GW_PORT=$(pick); GW_ADMIN=$(pick)
dir=$(mktemp -d); pids=(); GW_PID=
cleanup() {
  for p in "${pids[@]}" $GW_PID; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true; rm -rf "$dir"
}
trap cleanup EXIT

mkdir -p "$dir/www" "$dir/origin" "$dir/proxy/cache"
head -c 1024 /dev/zero | tr '\0' 'a' > "$dir/www/1k"
head -c 65536 /dev/zero | tr '\0' 'b' > "$dir/www/64k"
chmod -R a+rwX "$dir"   # nginx workers run as an unprivileged user
cache_bench_configs "$dir" "$ORIGIN" "$NGINX_PORT" "$GW_PORT" "$GW_ADMIN"
taskset -c 1 "$NGINX" -p "$dir/origin" -c "$dir/origin/nginx.conf" -g 'daemon off;' & pids+=($!)
taskset -c 0 "$NGINX" -p "$dir/proxy" -c "$dir/proxy/nginx.conf" -g 'daemon off;' & pids+=($!)
wait_http "http://127.0.0.1:$ORIGIN/1k" 20 || die "origin did not come up"
wait_http "http://127.0.0.1:$NGINX_PORT/1k" 20 || die "nginx did not come up"

start_gateway() { # binary
  if [ -n "$GW_PID" ]; then
    kill -9 "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true
  fi
  local i
  for i in $(seq 100); do port_free "$GW_PORT" && port_free "$GW_ADMIN" && break; sleep 0.1; done
  RUST_LOG=error taskset -c 0 "$1" -c "$dir/gateway.yaml" 2>"$dir/gateway.log" &
  GW_PID=$!
  wait_http "http://127.0.0.1:$GW_ADMIN/ready" 20 || die "$1 did not come up: $(tail -3 "$dir/gateway.log")"
}
warm() { # port path target
  curl -fsS -o /dev/null "http://127.0.0.1:$1$2"; curl -fsS -o /dev/null "http://127.0.0.1:$1$2"
  curl -fsS -D - -o /dev/null "http://127.0.0.1:$1$2" | grep -qi '^x-cache: HIT' || die "$3 does not hit $2"
}
run() { # label port path conns pid (the process serving: its CPU per request)
  local threads=1; [ "$4" -gt 1000 ] && threads=2
  local before after out; before=$(cpu_ticks "$5")
  out=$(taskset -c 1 wrk -t"$threads" -c"$4" -d"$DURATION" --latency "http://127.0.0.1:$2$3")
  after=$(cpu_ticks "$5")
  local rate p99 n
  rate=$(awk '/Requests\/sec/ {print $2}' <<<"$out"); p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  echo "$1 $3 $4 $rate $p99 $(cpu_per_request "$before" "$after" "$n") $(awk '/Non-2xx|Socket errors/' <<<"$out" | tr '\n' ' ')" | tee -a "$dir/results"
}

echo "wrk -d$DURATION, $ROUNDS rounds; proxies on core 0, wrk + origin on core 1"
echo "target path connections requests/s p99 user-µs/request system-µs/request"
warm "$NGINX_PORT" /1k nginx; warm "$NGINX_PORT" /64k nginx
NGINX_WORKER=$(pgrep -P "${pids[1]}" | head -1)
for r in $(seq "$ROUNDS"); do
  for c in $CASES; do
    path=${c%%:*}; conns=${c##*:}
    for side in A B; do
      bin=$A; [ "$side" = B ] && bin=$B
      start_gateway "$bin"; warm "$GW_PORT" "$path" "gateway $side"
      run "$side" "$GW_PORT" "$path" "$conns" "$GW_PID"
    done
    run nginx "$NGINX_PORT" "$path" "$conns" "$NGINX_WORKER"
  done
done
echo
echo "| case | A (before) | B (after) | nginx | A/nginx | B/nginx | CPU µs/request, user + system: A, B, nginx |"
echo "|---|---|---|---|---|---|---|"
python3 - "$dir/results" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    who, path, conns, rate, _p99, user, system = line.split()[:7]
    runs[(path, conns)].append((who, float(rate), float(user), float(system)))
for (path, conns), rs in runs.items():
    med = {w: [statistics.median(r[i] for r in rs if r[0] == w) for i in (1, 2, 3)]
           for w in ("A", "B", "nginx")}
    cpu = ", ".join(f"{med[w][1]:.1f} + {med[w][2]:.1f}" for w in ("A", "B", "nginx"))
    print(f"| {path}, {conns} connections | {med['A'][0]:,.0f}/s | {med['B'][0]:,.0f}/s"
          f" | {med['nginx'][0]:,.0f}/s | {med['A'][0] / med['nginx'][0]:.2f}"
          f" | {med['B'][0] / med['nginx'][0]:.2f} | {cpu} |")
PY
