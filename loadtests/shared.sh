#!/usr/bin/env bash
# Two gateways, one Redis: what the shared tier (cache.shared, shared.redis)
# changes for the same workload.
#
# 1. Origin requests: two gateways (each pinned to its own core, as two
#    instances behind a load balancer would be) each get KEYS distinct URLs,
#    in random order, for DURATION with wrk; the origin counts what reaches it.
#    Once without the shared tier, once with it (fresh processes, fresh Redis).
# 2. Hit latency of each tier (median and p99 over 500 keys, one keep-alive
#    client): a shared-tier hit (gateway B's first request for a key gateway A
#    stored) and a memory hit (B's second request for it).
# 3. Redis killed under load: wrk on both gateways for 12 s; Redis is killed
#    (SIGKILL) after 3 s and started again after 7 s. Every non-2xx answer and
#    socket error wrk saw is a request lost.
#
#   loadtests/shared.sh                 # KEYS=20000 DURATION=10s
# Needs wrk, redis-server, python3; builds target/release/gateway.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

KEYS=${KEYS:-20000}
DURATION=${DURATION:-10s}
command -v wrk >/dev/null || die "missing: wrk (apt-get install wrk)"
ensure_system_deps
cargo build --release -p gateway >/dev/null 2>&1 || cargo build --release -p gateway
GW=target/release/gateway

dir=$(mktemp -d); pids=()
cleanup() {
  for p in "${pids[@]}" $(cat "$dir/redis.pid" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT

ORIGIN=$(pick)
python3 loadtests/shared_origin.py "$ORIGIN" & pids+=($!)
wait_http "http://127.0.0.1:$ORIGIN/__count" 10 || die "the origin did not start"

REDIS=""; redis_pid=""
start_redis() {
  REDIS=${REDIS:-$(pick)}
  redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --logfile "$dir/redis.log" & redis_pid=$!; pids+=("$redis_pid")
  echo "$redis_pid" >> "$dir/redis.pid"   # the restart in part 3 runs in a subshell
  for _ in $(seq 100); do redis-cli -p "$REDIS" ping >/dev/null 2>&1 && return; sleep 0.05; done
  die "redis did not start"
}

# gateway NAME CORE SHARED(true/false): starts one; sets ${NAME}_PORT and ${NAME}_ADMIN.
gateway() {
  local name=$1 core=$2 shared=$3 port admin
  port=$(pick); admin=$(pick)
  local redis_block="" tier="enabled: false"
  if [ "$shared" = true ]; then
    redis_block="shared: { redis: { url: \"redis://127.0.0.1:$REDIS/0\", timeout: 20ms, open_for: 2s } }"
    tier="enabled: true, max_object_size: 1MiB"
  fi
  cat > "$dir/$name.yaml" <<YAML
listen: "127.0.0.1:$port"
threads: 1
pid_file: $dir/$name.pid
upgrade_sock: $dir/$name.sock
admin: { listen: "127.0.0.1:$admin", token: 0123456789abcdef0123 }
access_log: { enabled: false }
$redis_block
cache: { max_size: 256MiB, shared: { $tier } }
upstreams: { app: { servers: ["127.0.0.1:$ORIGIN"] } }
routes:
  - { name: all, match: { path_prefix: / }, upstream: app, cache: { enabled: true } }
YAML
  taskset -c "$core" "$GW" -c "$dir/$name.yaml" > "$dir/$name.log" 2>&1 & pids+=($!)
  eval "${name}_PORT=$port; ${name}_ADMIN=$admin; ${name}_PID=$!"
  wait_http "http://127.0.0.1:$admin/ready" 10 || die "gateway $name did not start: $(cat "$dir/$name.log")"
}

stop_gateways() { kill "$A_PID" "$B_PID" 2>/dev/null || true; wait "$A_PID" "$B_PID" 2>/dev/null || true; }

cat > "$dir/keys.lua" <<LUA
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
request = function()
  return wrk.format("GET", "/item/" .. math.random(1, $KEYS), { ["Host"] = "shop.example" })
end
LUA

count() { curl -fsS "http://127.0.0.1:$ORIGIN/__count"; }

# wrk against both gateways at once; prints "requests errors" summed.
load_both() {
  local secs=$1
  wrk -t1 -c32 -d"$secs" -s "$dir/keys.lua" "http://127.0.0.1:$A_PORT" > "$dir/wrk-a.txt" 2>&1 &
  local wa=$!
  wrk -t1 -c32 -d"$secs" -s "$dir/keys.lua" "http://127.0.0.1:$B_PORT" > "$dir/wrk-b.txt" 2>&1 &
  local wb=$!
  wait $wa $wb
  python3 - "$dir/wrk-a.txt" "$dir/wrk-b.txt" <<'PY'
import re, sys
req = err = 0
for f in sys.argv[1:]:
    t = open(f).read()
    req += int(re.search(r"(\d+) requests in", t).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    err += int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    err += sum(int(x) for x in m.groups()) if m else 0
print(req, err)
PY
}

say "1. origin requests for the same workload ($KEYS keys, $DURATION on each of two gateways)"
start_redis
for shared in false true; do
  before=$(count)
  gateway A 0 $shared; gateway B 1 $shared
  read -r total errors < <(load_both "$DURATION")
  after=$(count)
  echo "shared tier $shared: $total requests, $errors errors, origin saw $((after - before))"
  stop_gateways
done

say "2. hit latency of each tier (500 keys)"
gateway A 0 true; gateway B 1 true
python3 - "$A_PORT" "$B_PORT" <<'PY'
import http.client, statistics, sys, time
a, b = (http.client.HTTPConnection("127.0.0.1", int(p)) for p in sys.argv[1:3])
def get(c, path):
    t = time.perf_counter()
    c.request("GET", path, headers={"Host": "latency.example"})
    r = c.getresponse(); r.read()
    return (time.perf_counter() - t) * 1000, r.getheader("cache-status", "")
shared, memory, bad = [], [], 0
for i in range(500):
    p = f"/lat/{i}"
    get(a, p)                      # A: miss, stored, written to Redis
    time.sleep(0.002)              # the write is in the background
    ms, cs = get(b, p)
    if "detail=shared" in cs: shared.append(ms)
    else: bad += 1
    ms, cs = get(b, p)
    if cs.startswith("gateway; hit") and "shared" not in cs: memory.append(ms)
def q(v, p): return sorted(v)[min(len(v) - 1, int(len(v) * p))]
print(f"shared-tier hit: median {statistics.median(shared):.3f} ms, p99 {q(shared, .99):.3f} ms ({len(shared)} hits, {bad} not yet in Redis)")
print(f"memory hit:      median {statistics.median(memory):.3f} ms, p99 {q(memory, .99):.3f} ms ({len(memory)} hits)")
PY

say "3. Redis killed under load (12 s on both gateways; killed at 3 s, back at 7 s)"
( sleep 3; kill -9 "$redis_pid"; sleep 4; start_redis >/dev/null ) & chaos=$!
read -r total errors < <(load_both 12s)
wait $chaos || true
echo "requests: $total, lost (non-2xx + socket errors): $errors"
state() {
  curl -fsS -H "Authorization: Bearer 0123456789abcdef0123" "http://127.0.0.1:$1/stats" \
    | python3 -c 'import json,sys; s=json.load(sys.stdin)["shared_redis"]; print(s["state"], s["channel"])'
}
echo "at the end of the load: A $(state "$A_ADMIN"), B $(state "$B_ADMIN") (breaker, channel)"
# A breaker closes on its next successful call: send a request now and then.
t0=$SECONDS
for i in $(seq 100); do
  [ "$(state "$A_ADMIN")" = "closed up" ] && break
  curl -fsS -o /dev/null -H "Host: shop.example" "http://127.0.0.1:$A_PORT/probe/$i"; sleep 0.1
done
echo "A's tier, $((SECONDS - t0)) s after the load: $(state "$A_ADMIN")"
curl -fsS "http://127.0.0.1:$A_ADMIN/metrics" | grep -E '^gateway_shared_redis_calls_total' | sed 's/^/  /'
stop_gateways
