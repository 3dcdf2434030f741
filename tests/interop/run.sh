#!/usr/bin/env bash
# Runs the interop suite (real redis-server, real sidecars, real python-socketio, Flask-SocketIO under
# gunicorn, and Node socket.io).
#
# Installs the pinned clients first: tests/.venv from tests/requirements.txt and tests/node_modules
# from tests/package-lock.json, each redone only when its pin file changed. Builds the sidecar
# (incremental) unless SWITCHBOARD_SIDECAR_BIN names a binary. Extra arguments go to pytest,
# e.g. `tests/interop/run.sh -k direct`.
set -euo pipefail

interop="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tests="$(dirname "$interop")"
repo="$(dirname "$tests")"
venv="$tests/.venv"

stamp_matches() { # <pin file> <stamp file>
  [ -f "$2" ] && [ "$(sha256sum <"$1")" = "$(cat "$2")" ]
}

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

if [ -z "${SWITCHBOARD_SIDECAR_BIN:-}" ]; then
  (cd "$repo" && cargo build --quiet -p switchboard-sidecar)
fi

cd "$interop"
PYTHONDONTWRITEBYTECODE=1 exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
