#!/usr/bin/env bash
# Runs one of the long measurements that are not in CI, with the interop suite's real clients:
#   tests/bench/run.sh apps    application-level benchmark (apps.py: socket.io through sidecars vs direct)
#   tests/bench/run.sh soak    soak (soak.py: 10 minutes of mixed load, a Redis restart, RSS over time)
#   tests/bench/run.sh front   the HTTP front's latency (front.py: app straight, local front, forwarded)
#
# Installs the pinned clients (tests/.venv, tests/node_modules) if needed, builds the release
# sidecar unless SWITCHBOARD_SIDECAR_BIN names a binary, then runs the script.
set -euo pipefail

bench="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tests="$(dirname "$bench")"
repo="$(dirname "$tests")"
venv="$tests/.venv"

if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
if [ ! -f "$venv/.requirements.sha256" ] || [ "$(sha256sum <"$tests/requirements.txt")" != "$(cat "$venv/.requirements.sha256")" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$tests/requirements.txt"
  sha256sum <"$tests/requirements.txt" >"$venv/.requirements.sha256"
fi
if [ ! -f "$tests/node_modules/.lock.sha256" ] || [ "$(sha256sum <"$tests/package-lock.json")" != "$(cat "$tests/node_modules/.lock.sha256")" ]; then
  (cd "$tests" && npm ci --no-audit --no-fund --loglevel=error)
  sha256sum <"$tests/package-lock.json" >"$tests/node_modules/.lock.sha256"
fi

if [ -z "${SWITCHBOARD_SIDECAR_BIN:-}" ]; then
  (cd "$repo" && cargo build --quiet --release -p switchboard-sidecar)
  export SWITCHBOARD_SIDECAR_BIN="$repo/target/release/switchboard-sidecar"
fi

what="${1:?usage: tests/bench/run.sh apps|soak|front}"
shift
cd "$bench"
PYTHONDONTWRITEBYTECODE=1 exec "$venv/bin/python" "$bench/$what.py" "$@"
