#!/usr/bin/env bash
# The install path without Docker: the Helm chart on the local control plane (real etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler; kwok plays the node, so pods "run"
# without containers), with the operator binary run here instead of in a pod.
#
#   1. control plane up (switchboard-testkit controlplane up --fake-node)
#   2. helm install charts/switchboard (CRD, RBAC, Services, MutatingWebhookConfiguration); the
#      chart's operator Deployment is scaled to 0 (kwok would only pretend to run it)
#   3. every example in manifests/examples passes the API server's validation (server dry run)
#   4. the operator binary runs here with the chart Deployment's own arguments, as the chart's
#      ServiceAccount (so the chart's RBAC is what is tested), its webhook reached by URL
#   5. each chat example (python-socketio, Node socket.io) is applied; then: BackplaneReady, every
#      pod created with the injected native sidecar, the Ingress carries the cookie-affinity
#      annotations, and (once an ingress address is faked, as a controller would publish it) Ready
#
# What needs real containers and a real ingress controller (messages crossing pods through
# ingress-nginx) is tests/e2e/kind/run.sh.
#
# Needs kubectl, curl, python3 and the control plane from tests/controlplane/build.sh (helm comes
# with it). SWITCHBOARD_OPERATOR_BIN / SWITCHBOARD_TESTKIT_BIN skip the cargo build. --keep
# leaves everything running at the end (Ctrl-C stops it) and prints how to reach it.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
release=switchboard
operator_ns=switchboard-system
app_ns=chat-python # the example being checked
rtc=chat
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
controlplane_pid="" operator_pid=""
started=$SECONDS

# shellcheck source=tests/e2e/lib.sh
. "$repo/tests/e2e/lib.sh"

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if ((status != 0)) && [ -f "$KUBECONFIG" ]; then
    printf '\n----- diagnostics\n'
    kubectl get rtc,deploy,sts,pods,ingress -A -o wide 2>&1 | grep -v '^kube-system' || true
    kubectl -n "$app_ns" describe rtc "$rtc" 2>&1 | sed -n '/^Status:/,$p' || true
    kubectl get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 25 || true
    printf '\n----- operator log (last 40 lines)\n'
    tail -n 40 "$work/operator.log" 2>/dev/null || true
    if grep -q 'forbidden' "$work/operator.log" 2>/dev/null; then
      printf '\n----- the chart'"'"'s RBAC refused the operator (last 3 refusals)\n'
      grep -o 'error=.*forbidden: User[^(]*' "$work/operator.log" | sort -u | tail -n 3
    fi
  fi
  if [ -n "$operator_pid" ]; then
    kill -TERM "$operator_pid" 2>/dev/null || true
    wait "$operator_pid" 2>/dev/null || true
  fi
  if [ -n "$controlplane_pid" ]; then
    kill -TERM "$controlplane_pid" 2>/dev/null || true
    wait "$controlplane_pid" 2>/dev/null || true
  fi
  if ((status != 0)); then
    printf '\n----- control plane (last 15 lines)\n'
    tail -n 15 "$work/controlplane.log" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}


condition() { # <type>: the RealtimeCluster condition's "status reason"
  kubectl -n "$app_ns" get rtc "$rtc" \
    -o jsonpath="{.status.conditions[?(@.type==\"$1\")].status} {.status.conditions[?(@.type==\"$1\")].reason}"
}
condition_true() { [[ "$(condition "$1")" == True* ]]; }

step "build the operator and the control-plane launcher"
operator_bin="${SWITCHBOARD_OPERATOR_BIN:-}"
testkit_bin="${SWITCHBOARD_TESTKIT_BIN:-}"
if [ -z "$operator_bin" ] || [ -z "$testkit_bin" ]; then
  (cd "$repo" && cargo build --quiet -p switchboard-operator -p switchboard-testkit)
  operator_bin="${operator_bin:-$repo/target/debug/switchboard-operator}"
  testkit_bin="${testkit_bin:-$repo/target/debug/switchboard-testkit}"
fi
bin_dir="$("$testkit_bin" controlplane bin)" ||
  fail "no control plane binaries: run bash tests/controlplane/build.sh (or set SWITCHBOARD_CONTROLPLANE_BIN)"
helm="$bin_dir/helm"
[ -x "$helm" ] || helm="$(command -v helm)" || fail "helm: not in $bin_dir nor on PATH"
ok "operator $operator_bin, helm $helm"

step "control plane up (kwok node)"
"$testkit_bin" controlplane up --kubeconfig "$KUBECONFIG" --fake-node >"$work/controlplane.log" 2>&1 &
controlplane_pid=$!
until_ok 120 "API server ready" test -f "$KUBECONFIG"
until_ok 60 "node kwok-node-0 Ready" kubectl wait node/kwok-node-0 --for=condition=Ready --timeout=1s

step "helm install $release charts/switchboard -n $operator_ns"
"$helm" install "$release" "$repo/charts/switchboard" -n "$operator_ns" --create-namespace \
  --set replicaCount=1 --wait --timeout 2m >"$work/helm.log" 2>&1 || {
  cat "$work/helm.log" >&2
  fail "helm install"
}
ok "installed: $(kubectl get crd,deploy,svc,sa,mutatingwebhookconfiguration -A \
  -l app.kubernetes.io/instance="$release" -o name 2>/dev/null | tr '\n' ' ')"
deployment="$(kubectl -n "$operator_ns" get deploy -l app.kubernetes.io/instance="$release" -o name | head -n 1)"
[ -n "$deployment" ] || fail "the chart installed no operator Deployment"
# kwok would only pretend to run the chart's operator pods; the real operator runs below.
kubectl -n "$operator_ns" scale "$deployment" --replicas=0 >/dev/null
ok "$deployment scaled to 0"

step "every example passes the API server's validation (server-side dry run)"
kubectl create namespace examples >/dev/null
for example in "$repo"/manifests/examples/*.yaml; do
  # cert-manager is not installed here: its documents are left out, the rest is checked.
  python3 -c 'import sys
docs = open(sys.argv[1]).read().split("\n---\n")
sys.stdout.write("\n---\n".join(d for d in docs if "apiVersion: cert-manager.io/" not in d))' "$example" >"$work/example.yaml"
  kubectl apply --dry-run=server -n examples -f "$work/example.yaml" >/dev/null 2>"$work/dry-run.log" ||
    fail "$(basename "$example"): $(cat "$work/dry-run.log")"
  if cmp -s "$example" "$work/example.yaml"; then
    ok "$(basename "$example")"
  else
    ok "$(basename "$example") (its cert-manager documents unchecked: no cert-manager here)"
  fi
done
for example in "$repo"/manifests/examples/*/kustomization.yaml; do
  dir="$(dirname "$example")"
  # A dry run creates no namespace, so the kustomization's own namespace is applied first.
  kubectl apply -f "$dir/namespace.yaml" >/dev/null
  # kubectl warns that the kustomization's own sortOptions win over its --reorder flag.
  kubectl apply --dry-run=server -k "$dir" >/dev/null 2>"$work/dry-run.log" ||
    fail "$(basename "$dir"): $(grep -v 'Sorting order' "$work/dry-run.log")"
  ok "$(basename "$dir")/"
done

step "operator: run here, with the chart's arguments and ServiceAccount"
mapfile -t chart_args < <(kubectl -n "$operator_ns" get "$deployment" \
  -o jsonpath='{range .spec.template.spec.containers[0].args[*]}{@}{"\n"}{end}')
service_account="$(kubectl -n "$operator_ns" get "$deployment" -o jsonpath='{.spec.template.spec.serviceAccountName}')"
configuration="$(kubectl get mutatingwebhookconfiguration -l app.kubernetes.io/instance="$release" -o name | head -n 1)"
[ -n "$configuration" ] || fail "the chart installed no MutatingWebhookConfiguration"
ok "chart args: ${chart_args[*]}"
# The API server here cannot reach a Service's ClusterIP (no kube-proxy): point the webhook at
# the operator's port on this machine, as the operator's own injection tests do.
webhook_port="$(free_port)" http_port="$(free_port)"
kubectl patch "$configuration" --type=json -p "[
  {\"op\": \"remove\", \"path\": \"/webhooks/0/clientConfig/service\"},
  {\"op\": \"add\", \"path\": \"/webhooks/0/clientConfig/url\", \"value\": \"https://localhost:$webhook_port/mutate\"}]" >/dev/null
ok "$configuration calls https://localhost:$webhook_port/mutate"
# A kubeconfig holding the chart ServiceAccount's token: the operator gets only the chart's RBAC.
token="$(kubectl -n "$operator_ns" create token "$service_account" --duration=2h)"
operator_kubeconfig="$work/operator.kubeconfig"
server="$(kubectl config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')"
kubectl config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' |
  base64 -d >"$work/ca.crt"
[ -s "$work/ca.crt" ] || fail "no CA certificate in the admin kubeconfig"
KUBECONFIG="$operator_kubeconfig" kubectl config set-cluster local --server="$server" \
  --certificate-authority="$work/ca.crt" --embed-certs >/dev/null
KUBECONFIG="$operator_kubeconfig" kubectl config set-credentials operator --token="$token" >/dev/null
KUBECONFIG="$operator_kubeconfig" kubectl config set-context local --cluster=local --user=operator >/dev/null
KUBECONFIG="$operator_kubeconfig" kubectl config use-context local >/dev/null
KUBECONFIG="$operator_kubeconfig" POD_NAMESPACE="$operator_ns" POD_NAME=local-e2e \
  RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 "$operator_bin" "${chart_args[@]}" \
  --http-listen "127.0.0.1:$http_port" --webhook-listen "127.0.0.1:$webhook_port" \
  --webhook-host localhost >"$work/operator.log" 2>&1 &
operator_pid=$!
until_ok 90 "operator /readyz (leader, webhook certificate issued)" \
  curl -fsS "http://127.0.0.1:$http_port/readyz"
# shellcheck disable=SC2016 # until_eval evaluates it on every try
until_eval 90 "caBundle set on $configuration" \
  'test -n "$(kubectl get "$configuration" -o jsonpath="{.webhooks[0].clientConfig.caBundle}")"'

# check_example <dir> <namespace> <host>: applies a chat example and checks what the operator and
# the webhook made of it.
check_example() {
  local dir=$1 host=$3 actual expected
  app_ns=$2

  step "$dir: kubectl apply -k (3 replicas, RealtimeCluster $rtc)"
  kubectl apply -k "$repo/manifests/examples/$dir" 2>&1 | grep -v 'Sorting order' | sed 's/^/    /'

  step "$dir: the operator provisions the backplane"
  until_ok 180 "RealtimeCluster $rtc: BackplaneReady" condition_true BackplaneReady
  kubectl -n "$app_ns" get sts,svc,configmap -l app.kubernetes.io/instance="$rtc" -o name | sed 's/^/    /'

  step "$dir: every chat pod carries the injected native sidecar"
  until_ok 180 "3 pods: switchboard-sidecar first, restartPolicy Always, REDIS_URL set, Running" pods_injected
  sed 's/^/    /; s/|/  /g' "$work/pods.txt"

  step "$dir: the Ingress carries ingress-nginx cookie affinity"
  until_ok 60 "Ingress $rtc-app exists" kubectl -n "$app_ns" get ingress "$rtc-app"
  for expected in affinity=cookie affinity-mode=persistent session-cookie-name=sb-route \
    session-cookie-samesite=Lax proxy-read-timeout=3600 proxy-send-timeout=3600; do
    actual="$(kubectl -n "$app_ns" get ingress "$rtc-app" \
      -o jsonpath="{.metadata.annotations.nginx\.ingress\.kubernetes\.io/${expected%%=*}}")"
    [ "$actual" = "${expected#*=}" ] || fail "annotation ${expected%%=*} is '$actual', expected '${expected#*=}'"
    ok "nginx.ingress.kubernetes.io/$expected"
  done
  actual="$(kubectl -n "$app_ns" get ingress "$rtc-app" -o jsonpath='{.spec.rules[0].host} -> {.spec.rules[0].http.paths[0].backend.service.name}')"
  [ "$actual" = "$host -> $rtc-app" ] || fail "Ingress routes '$actual', expected '$host -> $rtc-app'"
  ok "$actual"

  step "$dir: Ready, once an ingress controller has published an address"
  # No ingress controller runs here: publish the address ingress-nginx would.
  kubectl -n "$app_ns" patch ingress "$rtc-app" --subresource=status --type=merge \
    -p '{"status":{"loadBalancer":{"ingress":[{"ip":"127.0.0.1"}]}}}' >/dev/null
  until_ok 120 "RealtimeCluster $rtc: Ready" condition_true Ready
  kubectl -n "$app_ns" get rtc "$rtc" | sed 's/^/    /'
}

# name | first init container | its restartPolicy | injected-by | app's REDIS_URL | phase, for
# each of the 3 chat pods; true when all 3 are as injected.
pods_injected() {
  local rows
  rows="$(kubectl -n "$app_ns" get pods -l app=chat -o jsonpath='{range .items[*]}{.metadata.name}|{.spec.initContainers[0].name}|{.spec.initContainers[0].restartPolicy}|{.metadata.annotations.switchboard\.dev/injected-by}|{.spec.containers[?(@.name=="app")].env[?(@.name=="REDIS_URL")].value}|{.status.phase}{"\n"}{end}')"
  [ "$(grep -c . <<<"$rows")" -eq 3 ] || return 1
  printf '%s\n' "$rows" >"$work/pods.txt"
  ! grep -v -E "^[^|]+\|switchboard-sidecar\|Always\|$rtc\|redis://127\.0\.0\.1:6379\|Running$" <<<"$rows"
}

check_example python-socketio-chat chat-python chat-python.localhost
check_example node-socketio-chat chat-node chat-node.localhost

step "PASS ($((SECONDS - started))s)"
if $keep; then
  printf 'Kept running: export KUBECONFIG=%s (operator log: %s). Ctrl-C stops everything.\n' \
    "$KUBECONFIG" "$work/operator.log"
  wait "$operator_pid"
fi
