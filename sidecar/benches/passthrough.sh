#!/usr/bin/env bash
# Pass-through benchmark: the real `redis-benchmark` against a redis-server and against a
# switchboard-sidecar whose upstream is that same server, side by side in one run.
#
#   sidecar/benches/passthrough.sh            # builds the release sidecar first
#   SIDECAR_BIN=/path/to/switchboard-sidecar sidecar/benches/passthrough.sh
#
# Knobs (environment): SIDECAR_BIN, REQUESTS (per test, default 200000), CLIENTS (default 50),
# TESTS (default "PING SET GET LPUSH PUBLISH"), PIPELINES (default "1 16"), ROUNDS (default 3:
# direct and sidecar alternate, the median round is shown), POOL_SIZE (the sidecar's
# SWITCHBOARD_PASSTHROUGH_POOL_SIZE, default 4), MANY_CLIENTS (default 1000).
#
# Prints ops/s and p50/p99 for each (test, pipeline depth) through the sidecar and direct, the
# ratios sidecar/direct, and the backplane's connection count while MANY_CLIENTS local
# connections do GET through the sidecar. Compare the columns of one run: on a shared machine
# absolute numbers move between runs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
REQUESTS=${REQUESTS:-200000}
CLIENTS=${CLIENTS:-50}
TESTS=${TESTS:-"PING SET GET LPUSH PUBLISH"}
PIPELINES=${PIPELINES:-"1 16"}
ROUNDS=${ROUNDS:-3}
POOL_SIZE=${POOL_SIZE:-4}
MANY_CLIENTS=${MANY_CLIENTS:-1000}

if [[ -z "${SIDECAR_BIN:-}" ]]; then
  (cd "$repo" && cargo build --release -q -p switchboard-sidecar)
  SIDECAR_BIN=$repo/target/release/switchboard-sidecar
fi
for tool in redis-server redis-benchmark redis-cli; do
  command -v "$tool" >/dev/null || { echo "passthrough.sh: $tool not found (apt-get install redis-server redis-tools)" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_ping() { # port
  for _ in $(seq 1 300); do
    [[ "$(redis-cli -p "$1" PING 2>/dev/null)" == PONG ]] && return 0
    sleep 0.05
  done
  echo "passthrough.sh: nothing answers PING on port $1" >&2
  exit 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --maxclients 20000 --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
wait_ping "$redis_port"

sidecar_port=$(free_port)
http_port=$(free_port)
SWITCHBOARD_PASSTHROUGH_POOL_SIZE=$POOL_SIZE RUST_LOG=warn "$SIDECAR_BIN" \
  --listen "127.0.0.1:$sidecar_port" --http-listen "127.0.0.1:$http_port" \
  --upstream "redis://127.0.0.1:$redis_port" --max-clients 20000 2>"$work/sidecar.log" &
pids+=($!)
wait_ping "$sidecar_port"

# One redis-benchmark run; prints "rps p50 p99" (latencies in ms).
bench() { # port test pipeline
  local port=$1 test=$2 pipeline=$3 args
  case $test in
    PING) args=(-t ping_mbulk) ;;
    SET) args=(-t set) ;;
    GET) args=(-t get) ;;
    LPUSH) args=(-t lpush) ;;
    PUBLISH) args=(PUBLISH bench:channel payload-of-some-bytes) ;;
  esac
  redis-benchmark -h 127.0.0.1 -p "$port" -c "$CLIENTS" -n "$REQUESTS" -P "$pipeline" \
    -r 100000 --csv "${args[@]}" 2>/dev/null |
    awk -F, 'NR == 2 { for (i = 1; i <= NF; i++) gsub(/"/, "", $i); print $2, $5, $7 }'
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "switchboard-sidecar pass-through benchmark (redis-benchmark)"
echo "  machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  $(redis-server --version | cut -d' ' -f1-3)"
echo "  sidecar binary: $SIDECAR_BIN (SWITCHBOARD_PASSTHROUGH_POOL_SIZE=$POOL_SIZE)"
echo "  $CLIENTS clients, $REQUESTS requests per test, random keys (-r 100000); median of $ROUNDS alternating rounds"
echo
printf '%-8s %3s %12s %12s %8s %10s %10s %10s %10s\n' test -P "direct/s" "sidecar/s" ratio "p50 dir" "p50 side" "p99 dir" "p99 side"
printf '%s\n' "-----------------------------------------------------------------------------------------------"
for test in $TESTS; do
  for pipeline in $PIPELINES; do
    : >"$work/direct" && : >"$work/sidecar"
    for _ in $(seq 1 "$ROUNDS"); do
      bench "$redis_port" "$test" "$pipeline" >>"$work/direct"
      bench "$sidecar_port" "$test" "$pipeline" >>"$work/sidecar"
    done
    d_rps=$(cut -d' ' -f1 "$work/direct" | median)
    s_rps=$(cut -d' ' -f1 "$work/sidecar" | median)
    d_p50=$(cut -d' ' -f2 "$work/direct" | median)
    s_p50=$(cut -d' ' -f2 "$work/sidecar" | median)
    d_p99=$(cut -d' ' -f3 "$work/direct" | median)
    s_p99=$(cut -d' ' -f3 "$work/sidecar" | median)
    ratio=$(awk -v s="$s_rps" -v d="$d_rps" 'BEGIN { printf "%.2fx", (d > 0 ? s / d : 0) }')
    printf '%-8s %3s %12.0f %12.0f %8s %8sms %8sms %8sms %8sms\n' "$test" "$pipeline" "$d_rps" "$s_rps" "$ratio" "$d_p50" "$s_p50" "$d_p99" "$s_p99"
  done
done

echo
echo "backplane connections while $MANY_CLIENTS local connections do GET through the sidecar"
connected() { redis-cli -p "$redis_port" INFO clients | tr -d '\r' | awk -F: '$1 == "connected_clients" { print $2 }'; }
# The poller's own connection counts once in every reading. The relay's subscriber and control
# links, and whatever pass-through links the runs above opened, are there already.
idle=$(($(connected) - 1))
redis-benchmark -h 127.0.0.1 -p "$sidecar_port" -c "$MANY_CLIENTS" -n $((MANY_CLIENTS * 200)) -t get -r 100000 -q >"$work/many" 2>&1 &
many=$!
peak=$idle
while kill -0 "$many" 2>/dev/null; do
  now=$(($(connected) - 1))
  ((now > peak)) && peak=$now
  sleep 0.1
done
wait "$many" || true
links() { curl -s "http://127.0.0.1:$http_port/metrics" 2>/dev/null | awk -v kind="$1" '$1 == "switchboard_sidecar_upstream_connections{kind=\""kind"\"}" { print $2 }'; }
echo "  backplane connections before: $idle; peak during the run: $peak (target: at most the pool size + the relay's 2 links = $((POOL_SIZE + 2)))"
pool=$(links pool)
dedicated=$(links dedicated)
echo "  sidecar metric upstream_connections after the run: pool ${pool:-n/a}, dedicated ${dedicated:-n/a}"
echo "  GET through the sidecar with $MANY_CLIENTS clients: $(tr '\r' '\n' <"$work/many" | grep -E 'requests per second' | tail -1 | sed 's/^ *//')"
