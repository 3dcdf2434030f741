#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit tests, byte-for-byte oracle tests against a real
# redis-server, API tests against a real kube-apiserver), the interop suite (real python-socketio,
# Flask-SocketIO and Node socket.io apps, each behind its own sidecar, one shared redis-server),
# the example chat apps, the install path (Helm chart + operator + examples) on the local control
# plane, and the journey on a real node (tests/e2e/node.sh: real pods, images built here).
#
# Needs redis-server on PATH, and for the API tests the control plane from
# tests/controlplane/build.sh (SWITCHBOARD_CONTROLPLANE_BIN, or its default cache path); without
# it those tests are skipped loudly, unless CI=true, where they fail. `.ci/run` installs it all.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The Gateway API CRDs for the HTTPRoute tests come from the Go module proxy (cached by Go);
# without Go they are skipped like the control plane, or fail under CI=true.
if [[ -z ${SWITCHBOARD_GATEWAY_API_CRDS:-} ]] && command -v go >/dev/null && command -v jq >/dev/null; then
  SWITCHBOARD_GATEWAY_API_CRDS="$(bash tests/controlplane/gateway-api.sh | tail -n 1)"
  export SWITCHBOARD_GATEWAY_API_CRDS
fi

echo "==> cargo test --workspace"
cargo test --workspace

echo "==> images: pack.py writes docker-archive images that read back as written"
python3 -m unittest discover -s tests/images -t tests/images

echo "==> interop: python-socketio, Flask-SocketIO and Node socket.io through sidecars"
bash tests/interop/run.sh

echo "==> examples: both chat servers across two pods on real sidecars and Redis"
bash tests/e2e/examples.sh

echo "==> install path: Helm chart, operator with the chart's RBAC, examples on the local control plane"
bash tests/e2e/local.sh

# The journey on a real node needs root and the node build (tests/node/build.sh); `.ci/run` has
# both. Elsewhere it is skipped loudly, and under CI=true it runs (and fails without them).
if [[ ${CI:-} == true || -n ${SWITCHBOARD_NODE_BIN:-} ]]; then
  echo "==> the journey on a real node: helm install, both examples, clients, failover, rollout, session routing, bad input, teardown"
  bash tests/e2e/node.sh
else
  echo
  echo "#### SKIPPING the real-node journey (tests/e2e/node.sh): set SWITCHBOARD_NODE_BIN (tests/node/build.sh) or CI=true"
  echo
fi
