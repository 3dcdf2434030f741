#!/usr/bin/env bash
# Fetches the Gateway API CRDs (HTTPRoute and friends, standard and experimental channels) from the
# Go module proxy, so the controller tests can install the real CRDs into the test control plane.
# Go caches the module; a warm run takes a moment. Prints the `config/crd` directory on its last
# line (use it as SWITCHBOARD_GATEWAY_API_CRDS).
set -euo pipefail

GATEWAY_API_VERSION=v1.4.0

dir=$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" | jq -r .Dir)
crds="$dir/config/crd"
for channel in standard experimental; do
  [[ -f "$crds/$channel/gateway.networking.k8s.io_httproutes.yaml" ]] || {
    echo "gateway-api $GATEWAY_API_VERSION has no $channel HTTPRoute CRD under $crds" >&2
    exit 1
  }
done
echo "$crds"
