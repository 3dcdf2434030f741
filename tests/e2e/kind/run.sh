#!/usr/bin/env bash
# The user's journey on kind, for Docker users: the same steps, with the same checks, as
# tests/e2e/node.sh runs on a real node in CI (both source tests/e2e/journey.sh): helm install,
# both chat examples at 3 replicas with managed Redis, Python and Node socket.io clients across
# pods through Traefik with its affinity cookie, a Redis failover under Sentinel, a rollout
# restart, bad input, delete and uninstall.
#
#   bash tests/e2e/kind/run.sh            # create, test, delete the cluster
#   bash tests/e2e/kind/run.sh --keep     # leave the cluster running afterwards
#
# Steps: kind cluster (host port E2E_HTTP_PORT -> Traefik) -> build the operator, sidecar and
# both chat images (their Dockerfiles) and `kind load` them -> Traefik (tests/node/traefik.yaml
# with the upstream image) -> journey_all.
#
# Needs docker, kind (>= 0.20), kubectl, helm, python3, node and npm; the chat images have their
# packages baked in (the pods download nothing). Settings (environment):
#   KIND_CLUSTER           cluster name                      (switchboard-e2e)
#   KIND_NODE_IMAGE        kind node image, Kubernetes >= 1.29 (kind's default)
#   E2E_HTTP_PORT          host port of the ingress          (8080)
#   TRAEFIK_IMAGE          Traefik's image                   (docker.io/library/traefik:v3.7)
#   REGISTRY, TAG          image names built and loaded      (ghcr.io/switchboard-dev, e2e)
#   SKIP_BUILD=1           use images already built with these names
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cluster="${KIND_CLUSTER:-switchboard-e2e}"
http_port="${E2E_HTTP_PORT:-8080}"
traefik_image="${TRAEFIK_IMAGE:-docker.io/library/traefik:v3.7}"
registry="${REGISTRY:-ghcr.io/switchboard-dev}"
tag="${TAG:-e2e}"
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
export KUBECONFIG="$work/kubeconfig"
created=false
# shellcheck source=tests/e2e/journey.sh
. "$repo/tests/e2e/journey.sh"

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if ((status != 0)) && $created; then
    journey_diagnostics
  fi
  if $created && ! $keep; then
    step "delete the kind cluster $cluster"
    kind delete cluster --name "$cluster" || true
  elif $created; then
    printf '\nKept: kind cluster %s (kind export kubeconfig --name %s).\n' "$cluster" "$cluster"
    printf 'Delete: kind delete cluster --name %s\n' "$cluster"
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "prerequisites"
for tool in docker kind kubectl helm python3 node npm; do
  command -v "$tool" >/dev/null || fail "$tool is not on PATH"
done
docker info >/dev/null 2>&1 || fail "docker cannot reach its daemon"
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  fail "a kind cluster named $cluster exists already: kind delete cluster --name $cluster, or set KIND_CLUSTER"
fi
ok "docker, kind, kubectl, helm, python3, node, npm"
journey_clients_setup

step "kind cluster $cluster (Traefik on host port $http_port)"
cat >"$work/kind.yaml" <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    # Traefik's web entry point listens on the node's port 8000 (a hostPort, below).
    extraPortMappings:
      - containerPort: 8000
        hostPort: $http_port
        listenAddress: 127.0.0.1
        protocol: TCP
EOF
kind_args=(--name "$cluster" --config "$work/kind.yaml" --kubeconfig "$KUBECONFIG" --wait 120s)
if [ -n "${KIND_NODE_IMAGE:-}" ]; then
  kind_args+=(--image "$KIND_NODE_IMAGE")
fi
created=true
kind create cluster "${kind_args[@]}"
kubectl version | sed 's/^/    /'

step "images $registry/switchboard-{operator,sidecar}:$tag and both chat apps"
if [ "${SKIP_BUILD:-}" != 1 ]; then
  make -C "$repo" images REGISTRY="$registry" TAG="$tag"
fi
make -C "$repo" kind-load REGISTRY="$registry" TAG="$tag" KIND_CLUSTER="$cluster"
# The names the examples' kustomization.yaml give their app images (`images:`).
for app in chat-python:python-socketio-chat chat-node:node-socketio-chat; do
  if [ "${SKIP_BUILD:-}" != 1 ]; then
    docker build -t "switchboard.local/${app%%:*}:dev" "$repo/manifests/examples/${app#*:}"
  fi
  kind load docker-image --name "$cluster" "switchboard.local/${app%%:*}:dev"
done
export SWITCHBOARD_OPERATOR_IMAGE="$registry/switchboard-operator:$tag"
export SWITCHBOARD_SIDECAR_IMAGE="$registry/switchboard-sidecar:$tag"
export SWITCHBOARD_CHAT_PYTHON_IMAGE=switchboard.local/chat-python:dev
export SWITCHBOARD_CHAT_NODE_IMAGE=switchboard.local/chat-node:dev
# Empty: the operator's default Redis image, which the node pulls.
export SWITCHBOARD_REDIS_IMAGE=""

step "Traefik ($traefik_image), the ingress"
mkdir -p "$work/traefik"
cp "$repo/tests/node/traefik.yaml" "$work/traefik/"
cat >"$work/traefik/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [traefik.yaml]
images:
  - name: switchboard.test/traefik
    newName: ${traefik_image%:*}
    newTag: "${traefik_image##*:}"
patches:
  - target: { kind: Deployment, name: traefik }
    patch: |
      - { op: replace, path: /spec/template/spec/containers/0/imagePullPolicy, value: IfNotPresent }
      - { op: add, path: /spec/template/spec/containers/0/ports/0/hostPort, value: 8000 }
EOF
kubectl apply -k "$work/traefik" >/dev/null
kubectl -n traefik rollout status deployment/traefik --timeout=5m >/dev/null
ingress_ip=127.0.0.1
ingress_port=$http_port
ingress_class=traefik
ok "Traefik at $ingress_ip:$ingress_port"

helm="$(command -v helm)"
pull_policy=IfNotPresent
journey_all
