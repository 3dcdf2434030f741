#!/usr/bin/env bash
# Regenerates crds/ from the Rust types. CI runs this and then `git diff --exit-code crds`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p crds
cargo run --quiet -p switchboard-operator --bin crdgen > crds/realtimeclusters.switchboard.dev.yaml
