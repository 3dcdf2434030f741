#!/usr/bin/env bash
# Runs the chat examples' own code (manifests/examples/*-socketio-chat) as two "pods" each, every
# pod with its own sidecar, all sidecars on one real redis-server, and proves with
# tests/e2e/chat_check.py that a message sent on one pod reaches a client on the other.
#
# Uses the pinned clients of the interop suite (tests/.venv, tests/node_modules; installed by
# tests/interop/run.sh's rules when missing) and the sidecar binary (SWITCHBOARD_SIDECAR_BIN, or
# built incrementally). Needs redis-server on PATH. No Kubernetes.
set -euo pipefail

e2e="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tests="$(dirname "$e2e")"
repo="$(dirname "$tests")"
examples="$repo/manifests/examples"
venv="$tests/.venv"
work="$(mktemp -d)"
pids=()

log() { printf '==> %s\n' "$*"; }
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if ((status != 0)); then
    for f in "$work"/*.log; do
      [ -f "$f" ] || continue
      printf '\n----- %s (last 30 lines)\n' "$(basename "$f")"
      tail -n 30 "$f"
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
start() { # <log name> <command...>: runs in the background, logs to $work/<name>.log
  local name=$1
  shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=("$!")
}
wait_http() { # <url> <what>: 30 s deadline
  local deadline=$((SECONDS + 30))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    if ((SECONDS > deadline)); then
      echo "$2 did not answer $1 within 30 s" >&2
      return 1
    fi
    sleep 0.2
  done
}

stamp_matches() { # <pin file> <stamp file>
  [ -f "$2" ] && [ "$(sha256sum <"$1")" = "$(cat "$2")" ]
}
log "pinned clients (tests/requirements.txt, tests/package-lock.json)"
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
if ! stamp_matches "$tests/requirements.txt" "$venv/.requirements.sha256"; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$tests/requirements.txt"
  sha256sum <"$tests/requirements.txt" >"$venv/.requirements.sha256"
fi
if ! stamp_matches "$tests/package-lock.json" "$tests/node_modules/.lock.sha256"; then
  (cd "$tests" && npm ci --no-audit --no-fund --loglevel=error)
  sha256sum <"$tests/package-lock.json" >"$tests/node_modules/.lock.sha256"
fi

sidecar="${SWITCHBOARD_SIDECAR_BIN:-}"
if [ -z "$sidecar" ]; then
  log "building the sidecar"
  (cd "$repo" && cargo build --quiet -p switchboard-sidecar)
  sidecar="$repo/target/debug/switchboard-sidecar"
fi

log "redis-server and two sidecars (pod-1, pod-2)"
redis_port="$(free_port)"
start redis redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no
sidecar_ports=()
for pod in 1 2; do
  listen="$(free_port)" http="$(free_port)"
  sidecar_ports+=("$listen")
  start "sidecar-$pod" "$sidecar" --listen "127.0.0.1:$listen" --http-listen "127.0.0.1:$http" \
    --upstream "redis://127.0.0.1:$redis_port" --sidecar-id "pod-$pod"
  wait_http "http://127.0.0.1:$http/readyz" "sidecar pod-$pod"
done

run_example() { # <name> <command...>: two instances of the app, then the two-client check
  local name=$1 urls=()
  shift
  log "$name: two app instances, each on its own sidecar"
  for pod in 1 2; do
    local port
    port="$(free_port)"
    urls+=("http://127.0.0.1:$port")
    start "$name-pod-$pod" env POD_NAME="$name-pod-$pod" PORT="$port" \
      REDIS_URL="redis://127.0.0.1:${sidecar_ports[pod - 1]}" "$@"
    wait_http "http://127.0.0.1:$port/healthz" "$name pod-$pod"
  done
  log "$name: one client on each pod, a message across"
  "$venv/bin/python" "$e2e/chat_check.py" --url "${urls[0]}" --url-b "${urls[1]}" --attempts 1
}

run_example python-socketio-chat env PYTHONDONTWRITEBYTECODE=1 \
  "$venv/bin/python" "$examples/python-socketio-chat/app.py"
run_example node-socketio-chat env NODE_PATH="$tests/node_modules" \
  node "$examples/node-socketio-chat/app.js"
log "both chat examples work across pods"
