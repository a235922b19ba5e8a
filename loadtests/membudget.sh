#!/bin/bash
# RSS of the whole stack (redis, upstream-app, gateway) idle and under 200 users
# of the load-test mix for 60 s. Needs target/release/{gateway,upstream-app}
# (cargo build --release) and target/debug/loadtest (cargo build -p loadtests).
# Loopback only; stops what it starts.
set -u
cd "$(dirname "$0")/.."
R=$((20000 + RANDOM % 1000)); A=$((21000 + RANDOM % 1000)); G=$((22000 + RANDOM % 1000)); M=$((23000 + RANDOM % 1000))
dir=$(mktemp -d)
redis-server --port $R --bind 127.0.0.1 --save "" --appendonly no --dir $dir --logfile $dir/redis.log & rp=$!
APP_REDIS__URL="redis://127.0.0.1:$R/0" PORT=$A target/release/upstream-app -c conf/upstream-app.yaml > $dir/app.log 2>&1 & ap=$!
GATEWAY_LISTEN=127.0.0.1:$G GATEWAY_ADMIN__LISTEN=127.0.0.1:$M GATEWAY_UPSTREAMS__APP__SERVERS="[\"127.0.0.1:$A\"]" \
GATEWAY_PID_FILE=$dir/gw.pid GATEWAY_UPGRADE_SOCK=$dir/gw.sock GATEWAY_ACCESS_LOG__ENABLED=false \
  target/release/gateway -c conf/examples/upstream-app-gateway.yaml > $dir/gw.log 2>&1 & gp=$!
sleep 3
rss() { awk '/VmRSS/{print $2}' /proc/$1/status; }
echo "idle: redis $(rss $rp) KiB, app $(rss $ap) KiB, gateway $(rss $gp) KiB"
TARGET=http://127.0.0.1:$G timeout 120 target/debug/loadtest attack -- --users 200 --increase-rate 20 --run-time 60s --report-file $dir/r.html > $dir/load.log 2>&1 & lp=$!
maxr=0; maxa=0; maxg=0
for i in $(seq 1 26); do
  sleep 3
  r=$(rss $rp); a=$(rss $ap); g=$(rss $gp)
  [ "$r" -gt $maxr ] && maxr=$r; [ "$a" -gt $maxa ] && maxa=$a; [ "$g" -gt $maxg ] && maxg=$g
done
wait $lp
echo "peak under 200 users: redis $maxr KiB, app $maxa KiB, gateway $maxg KiB"
grep -iE "requests|fail" $dir/load.log | tail -5
kill $gp $ap $rp; wait 2>/dev/null; rm -rf $dir
