#!/usr/bin/env bash
# The user's journey on a real node on this machine: real pods (containerd, runc, kubelet), images
# built here (tests/images/build.sh), Traefik as the ingress, every step asserted. The steps are
# tests/e2e/journey.sh's, which tests/e2e/kind/run.sh runs too:
#
#   node up (switchboard-testkit controlplane up --node); the images imported into containerd;
#   Traefik (tests/node/traefik.yaml); then install, examples, clients, failover, rollout,
#   routing, bad_input, teardown (journey.sh says what each asserts).
# On failure: events, pod logs, the RealtimeClusters' status, the sidecars' metrics, the node's log.
#
# Needs root, the control plane and node builds (tests/controlplane/build.sh,
# tests/node/build.sh), what tests/images/build.sh needs, python3, node, npm, kubectl.
# SWITCHBOARD_TESTKIT_BIN skips building the testkit; --keep leaves it all running at the end.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
keep=false
for arg in "$@"; do
  case $arg in
    --keep) keep=true ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "unknown argument: $arg (try --help)" >&2
      exit 64
      ;;
  esac
done

work="$(mktemp -d)"
export KUBECONFIG="$work/admin.kubeconfig"
node_pid=""
# shellcheck source=tests/e2e/journey.sh
. "$repo/tests/e2e/journey.sh"

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if ((status != 0)) && [ -f "$KUBECONFIG" ]; then
    journey_diagnostics
    printf '\n----- node (last lines of its log)\n'
    tail -n 8 "$work/node.log" 2>/dev/null || true
  fi
  if $keep && ((status == 0)) && [ -n "$node_pid" ]; then
    printf '\nKept running: export KUBECONFIG=%s. Ctrl-C stops everything.\n' "$KUBECONFIG"
    wait "$node_pid" || true
  fi
  if [ -n "$node_pid" ]; then
    # SIGTERM: the testkit deletes every pod and puts the machine back as it was.
    kill -TERM "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "build: the testkit, the images, the clients"
testkit="${SWITCHBOARD_TESTKIT_BIN:-}"
if [ -z "$testkit" ]; then
  (cd "$repo" && cargo build --quiet -p switchboard-testkit)
  testkit="${CARGO_TARGET_DIR:-$repo/target}/debug/switchboard-testkit"
fi
images_env="$(bash "$repo/tests/images/build.sh" | tail -n 1)"
# shellcheck disable=SC1090 # written by build.sh
. "$images_env"
ok "images: $SWITCHBOARD_OPERATOR_IMAGE $SWITCHBOARD_SIDECAR_IMAGE $SWITCHBOARD_REDIS_IMAGE $SWITCHBOARD_CHAT_PYTHON_IMAGE $SWITCHBOARD_CHAT_NODE_IMAGE"
journey_clients_setup

step "node up (containerd, kubelet, kube-proxy, CoreDNS) and the images imported"
"$testkit" controlplane up --node --kubeconfig "$KUBECONFIG" --env-file "$work/node.env" >"$work/node.log" 2>&1 &
node_pid=$!
deadline=$((SECONDS + 300))
until [ -f "$KUBECONFIG" ]; do
  kill -0 "$node_pid" 2>/dev/null || fail "controlplane up --node exited: $(tail -n 20 "$work/node.log")"
  ((SECONDS < deadline)) || fail "node not up within 300s"
  sleep 1
done
# shellcheck disable=SC1091 # written by the testkit
. "$work/node.env"
ok "node $SWITCHBOARD_NODE_NAME Ready at $SWITCHBOARD_NODE_IP"
SWITCHBOARD_CTR="$SWITCHBOARD_CTR" bash "$repo/tests/images/build.sh" --import "$SWITCHBOARD_CONTAINERD_ADDRESS" >/dev/null
ok "imported: $("$SWITCHBOARD_CTR" --address "$SWITCHBOARD_CONTAINERD_ADDRESS" -n k8s.io images ls -q | grep -c '^switchboard.local/') switchboard.local images"

step "Traefik, the ingress"
kubectl apply -f "$repo/tests/node/traefik.yaml" >/dev/null
kubectl -n traefik rollout status deployment/traefik --timeout=2m >/dev/null
# The new pod's address, not the one of the pod the patch replaced (still terminating).
ingress_ip="$(kubectl -n traefik get pods -l app=traefik -o go-template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{.status.podIP}} {{end}}{{end}}' | awk '{ print $1 }')"
[ -n "$ingress_ip" ] || fail "Traefik has no pod IP"
ingress_port=8000
ingress_class=traefik
ok "Traefik at $ingress_ip:$ingress_port"

helm="$SWITCHBOARD_CONTROLPLANE_BIN/helm"
[ -x "$helm" ] || helm="$("$testkit" controlplane bin)/helm"
# Imported by hand above: a pull could only fail.
pull_policy=Never
journey_all
