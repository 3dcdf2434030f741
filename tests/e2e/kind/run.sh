#!/usr/bin/env bash
# End to end on a real cluster: kind, ingress-nginx, the Helm chart, the python-socketio (or Node
# socket.io) chat example at 3 replicas, and two socket.io clients that reach different pods
# through the ingress and exchange a message.
#
#   bash tests/e2e/kind/run.sh            # create, test, delete the cluster
#   bash tests/e2e/kind/run.sh --keep     # leave the cluster running afterwards
#
# Steps: kind cluster (host port E2E_HTTP_PORT -> ingress) -> build both images and the chat
# example's image (its Dockerfile) and `kind load` them -> ingress-nginx (pinned manifest) ->
# helm install charts/switchboard -> apply manifests/examples/<example> -> RealtimeCluster Ready
# -> tests/e2e/chat_check.py: client A and client B, each with its own cookie jar (client B
# long-polling only, which fails unless the affinity cookie pins it), on two different pods
# (each reply names its pod); A's message must reach B.
#
# Needs docker, kind (>= 0.20), kubectl, helm, python3 and curl; the chat image has its packages
# baked in (the pods download nothing). Settings (environment):
#   KIND_CLUSTER           cluster name                      (switchboard-e2e)
#   KIND_NODE_IMAGE        kind node image, Kubernetes >= 1.29 (kind's default)
#   E2E_HTTP_PORT          host port of the ingress          (8080)
#   INGRESS_NGINX_VERSION  ingress-nginx release             (controller-v1.15.1)
#   REGISTRY, TAG          image names built and loaded      (ghcr.io/switchboard-dev, e2e)
#   E2E_EXAMPLE            python or node: which chat example (python)
#   SKIP_BUILD=1           use images already built with these names
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cluster="${KIND_CLUSTER:-switchboard-e2e}"
http_port="${E2E_HTTP_PORT:-8080}"
ingress_nginx_version="${INGRESS_NGINX_VERSION:-controller-v1.15.1}"
ingress_nginx_manifest="https://raw.githubusercontent.com/kubernetes/ingress-nginx/$ingress_nginx_version/deploy/static/provider/kind/deploy.yaml"
registry="${REGISTRY:-ghcr.io/switchboard-dev}"
tag="${TAG:-e2e}"
operator_ns=switchboard-system
rtc=chat
case "${E2E_EXAMPLE:-python}" in
  python) example=python-socketio-chat app_ns=chat-python host=chat-python.localhost chat_image=chat-python ;;
  node) example=node-socketio-chat app_ns=chat-node host=chat-node.localhost chat_image=chat-node ;;
  *)
    echo "E2E_EXAMPLE must be python or node, not '$E2E_EXAMPLE'" >&2
    exit 64
    ;;
esac
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
started=$SECONDS

step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - started))" "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() {
  printf '\nFAIL: %s\n' "$*" >&2
  exit 1
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if ((status != 0)) && $created; then
    printf '\n----- diagnostics\n'
    kubectl get rtc,deploy,sts,pods,ingress -A -o wide 2>&1 || true
    kubectl -n "$app_ns" describe rtc "$rtc" 2>&1 | sed -n '/^Status:/,$p' || true
    kubectl get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 30 || true
    printf '\n----- operator logs\n'
    kubectl -n "$operator_ns" logs -l app.kubernetes.io/instance=switchboard --tail=40 --prefix 2>&1 || true
    printf '\n----- chat pods (app and sidecar)\n'
    kubectl -n "$app_ns" logs -l app=chat --all-containers --tail=20 --prefix 2>&1 || true
  fi
  if $created && ! $keep; then
    step "delete the kind cluster $cluster"
    kind delete cluster --name "$cluster" || true
  elif $created; then
    printf '\nKept: kind cluster %s (kind export kubeconfig --name %s).\n' "$cluster" "$cluster"
    printf 'Chat: http://%s:%s/  Delete: kind delete cluster --name %s\n' "$host" "$http_port" "$cluster"
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# until_ok <seconds> <what> <command...>: retries the command every 2 seconds until it succeeds.
until_ok() {
  local limit=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "$what: not within ${limit}s"
    sleep 2
  done
  ok "$what"
}

step "prerequisites"
for tool in docker kind kubectl helm python3 curl; do
  command -v "$tool" >/dev/null || fail "$tool is not on PATH"
done
docker info >/dev/null 2>&1 || fail "docker cannot reach its daemon"
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  fail "a kind cluster named $cluster exists already: kind delete cluster --name $cluster, or set KIND_CLUSTER"
fi
ok "docker, kind, kubectl, helm, python3, curl"

step "kind cluster $cluster (ingress on host port $http_port)"
cat >"$work/kind.yaml" <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    # ingress-nginx's kind manifest runs its controller on the node labelled ingress-ready,
    # with host ports 80 and 443 on that node.
    labels:
      ingress-ready: "true"
    extraPortMappings:
      - containerPort: 80
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

step "images $registry/switchboard-{operator,sidecar}:$tag"
if [ "${SKIP_BUILD:-}" != 1 ]; then
  make -C "$repo" images REGISTRY="$registry" TAG="$tag"
fi
make -C "$repo" kind-load REGISTRY="$registry" TAG="$tag" KIND_CLUSTER="$cluster"

# The name the example's kustomization.yaml gives its app image (`images:`).
chat_ref="switchboard.local/$chat_image:dev"
step "image $chat_ref (manifests/examples/$example/Dockerfile)"
if [ "${SKIP_BUILD:-}" != 1 ]; then
  docker build -t "$chat_ref" "$repo/manifests/examples/$example"
fi
kind load docker-image --name "$cluster" "$chat_ref"

step "ingress-nginx $ingress_nginx_version"
kubectl apply -f "$ingress_nginx_manifest" >/dev/null
kubectl -n ingress-nginx rollout status deployment/ingress-nginx-controller --timeout=5m
# Its validating webhook refuses nothing but must answer before any Ingress can be created.
kubectl -n ingress-nginx wait pod -l app.kubernetes.io/component=controller --for=condition=Ready --timeout=2m

step "helm install switchboard charts/switchboard -n $operator_ns"
helm install switchboard "$repo/charts/switchboard" -n "$operator_ns" --create-namespace --wait --timeout 5m \
  --set image.repository="$registry/switchboard-operator" --set image.tag="$tag" \
  --set sidecar.image.repository="$registry/switchboard-sidecar" --set sidecar.image.tag="$tag"
kubectl -n "$operator_ns" get pods -o wide | sed 's/^/    /'
# Pods created before the leader has written the caBundle would start without the sidecar.
until_ok 120 "webhook caBundle set" test -n "$(kubectl get mutatingwebhookconfiguration \
  -l app.kubernetes.io/instance=switchboard -o jsonpath='{.items[0].webhooks[0].clientConfig.caBundle}')"

step "apply manifests/examples/$example"
kubectl apply -k "$repo/manifests/examples/$example" 2>&1 | grep -v 'Sorting order' | sed 's/^/    /'
kubectl -n "$app_ns" rollout status deployment/chat --timeout=6m
kubectl -n "$app_ns" wait "rtc/$rtc" --for=condition=Ready --timeout=5m
kubectl -n "$app_ns" get rtc,pods -o wide | sed 's/^/    /'
sidecars="$(kubectl -n "$app_ns" get pods -l app=chat \
  -o jsonpath='{range .items[*]}{.spec.initContainers[0].name}{"\n"}{end}' | grep -c '^switchboard-sidecar$' || true)"
[ "$sidecars" -eq 3 ] || fail "$sidecars of 3 chat pods carry the switchboard-sidecar"
ok "3 chat pods with the native sidecar"

step "the ingress serves http://$host:$http_port"
until_ok 120 "Engine.IO handshake through ingress-nginx" \
  curl -fsS --resolve "$host:$http_port:127.0.0.1" "http://$host:$http_port/socket.io/?EIO=4&transport=polling"

step "python-socketio clients (tests/requirements.txt)"
venv="$repo/tests/.venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$repo/tests/requirements.txt"

step "two clients on two pods through the ingress; a message across"
"$venv/bin/python" "$repo/tests/e2e/chat_check.py" --url "http://$host:$http_port" \
  --resolve "$host:127.0.0.1" --attempts 20

step "PASS ($((SECONDS - started))s)"
