#!/usr/bin/env bash
# The user's journey on a real node on this machine: real pods (containerd, runc, kubelet), images
# built here (tests/images/build.sh), Traefik as the ingress, every step asserted.
#
#   1. node up (switchboard-testkit controlplane up --node); the images imported into containerd
#   2. Traefik (tests/node/traefik.yaml), the IngressClass the operator writes sticky cookies for
#   3. helm install charts/switchboard with the local image names, into a namespace enforcing Pod
#      Security restricted: 2 operator pods Ready, one leader (Lease), the webhook's caBundle set
#   4. both chat examples (manifests/examples/*-socketio-chat, through a kustomize overlay that
#      only names the local images and className traefik): managed Redis pods, 3 app pods each
#      with the injected native sidecar, Ready, in namespaces enforcing restricted
#   5. real socket.io clients through Traefik with its affinity cookie: Python (chat_check.py)
#      and Node (node_chat_check.js: fetchSockets() across pods exact)
#   6. replicas: 3 (Sentinel): the Redis primary pod is deleted while numbered messages flow; no
#      disconnect, none lost (node_clients.py)
#   7. kubectl rollout restart: clients reconnect and delivery resumes; no outdated pod in status
#   8. bad input: an invalid RealtimeCluster is refused naming the field; an external Redis that
#      does not exist gives BackplaneReady=False saying what to fix, /readyz 503, no restarts
#   9. kubectl delete rtc removes what the operator made; helm uninstall leaves nothing
# On failure: events, pod logs, the RealtimeClusters' status and the sidecars' metrics.
#
# Needs root, the control plane and node builds (tests/controlplane/build.sh,
# tests/node/build.sh), what tests/images/build.sh needs, python3, node, npm, kubectl, curl.
# SWITCHBOARD_TESTKIT_BIN skips building the testkit; --keep leaves it all running at the end.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
release=switchboard
operator_ns=switchboard-system
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
node_pid=""
app_ns=""
started=$SECONDS

step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - started))" "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() {
  printf '\nFAIL: %s\n' "$*" >&2
  exit 1
}

diagnostics() {
  printf '\n----- diagnostics\n'
  kubectl get rtc,deploy,sts,pods,svc,ingress -A -o wide 2>&1 | grep -v '^kube-system' || true
  local ns
  for ns in chat-python chat-node journey-bad; do
    kubectl -n "$ns" describe rtc 2>/dev/null | sed -n '/^Status:/,$p' || true
  done
  kubectl get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 40 || true
  printf '\n----- operator logs\n'
  kubectl -n "$operator_ns" logs -l app.kubernetes.io/instance="$release" --tail=40 --prefix 2>&1 || true
  for ns in chat-python chat-node; do
    printf '\n----- %s pods (app, sidecar, redis)\n' "$ns"
    kubectl -n "$ns" logs -l app=chat --all-containers --tail=15 --prefix 2>&1 || true
    kubectl -n "$ns" logs -l app.kubernetes.io/instance="$rtc" --all-containers --tail=15 --prefix 2>&1 || true
    # The sidecars' own view: link state, reconnects, buffered and dropped messages.
    local ip
    for ip in $(kubectl -n "$ns" get pods -l app=chat -o jsonpath='{.items[*].status.podIP}' 2>/dev/null); do
      printf -- '--- sidecar metrics %s\n' "$ip"
      curl -fsS --max-time 3 "http://$ip:9091/metrics" 2>&1 | grep -E '^switchboard_' | grep -v '_bucket' | head -n 25 || true
    done
  done
  printf '\n----- node (last lines of each log)\n'
  tail -n 8 "$work/node.log" 2>/dev/null || true
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if ((status != 0)) && [ -f "$KUBECONFIG" ]; then
    diagnostics
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

# until_ok <seconds> <what> <command...>: retries the command every second until it succeeds.
until_ok() {
  local limit=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "$what: not within ${limit}s"
    sleep 1
  done
  ok "$what"
}

condition() { # <namespace> <type>: the RealtimeCluster condition's "status reason: message"
  kubectl -n "$1" get rtc "$rtc" -o jsonpath="{.status.conditions[?(@.type==\"$2\")].status} {.status.conditions[?(@.type==\"$2\")].reason}: {.status.conditions[?(@.type==\"$2\")].message}"
}
condition_is() { [[ "$(condition "$1" "$2")" == "$3"* ]]; }

repo_of() { echo "${1%:*}"; }
tag_of() { echo "${1##*:}"; }

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
venv="$repo/tests/.venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$repo/tests/requirements.txt"
[ -d "$repo/tests/node_modules/socket.io-client" ] ||
  (cd "$repo/tests" && npm ci --no-audit --no-fund --loglevel=error)
ok "python-socketio clients ($venv), socket.io-client (tests/node_modules)"

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
traefik_ip="$(kubectl -n traefik get pods -l app=traefik -o go-template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{.status.podIP}} {{end}}{{end}}' | awk '{ print $1 }')"
[ -n "$traefik_ip" ] || fail "Traefik has no pod IP"
ok "Traefik at $traefik_ip:8000"

step "helm install $release with the local images, in a namespace enforcing restricted"
helm="$SWITCHBOARD_CONTROLPLANE_BIN/helm"
[ -x "$helm" ] || helm="$("$testkit" controlplane bin)/helm"
kubectl create namespace "$operator_ns" >/dev/null
kubectl label namespace "$operator_ns" pod-security.kubernetes.io/enforce=restricted >/dev/null
"$helm" install "$release" "$repo/charts/switchboard" -n "$operator_ns" --wait --timeout 3m \
  --set image.repository="$(repo_of "$SWITCHBOARD_OPERATOR_IMAGE")" \
  --set image.tag="$(tag_of "$SWITCHBOARD_OPERATOR_IMAGE")" --set image.pullPolicy=Never \
  --set sidecar.image.repository="$(repo_of "$SWITCHBOARD_SIDECAR_IMAGE")" \
  --set sidecar.image.tag="$(tag_of "$SWITCHBOARD_SIDECAR_IMAGE")" >"$work/helm.log" 2>&1 ||
  fail "helm install: $(cat "$work/helm.log")"
deployment="$(kubectl -n "$operator_ns" get deploy -l app.kubernetes.io/instance="$release" -o name | head -n 1)"
kubectl -n "$operator_ns" rollout status "$deployment" --timeout=2m >/dev/null
ready="$(kubectl -n "$operator_ns" get "$deployment" -o jsonpath='{.status.readyReplicas}')"
[ "$ready" = 2 ] || fail "$ready of 2 operator pods Ready"
ok "kubectl rollout status $deployment: 2 pods Ready"
operator_pods="$(kubectl -n "$operator_ns" get pods -l app.kubernetes.io/instance="$release" -o jsonpath='{.items[*].metadata.name}')"
leader_is_a_pod() {
  local holder
  holder="$(kubectl -n "$operator_ns" get lease -o jsonpath='{.items[*].spec.holderIdentity}')"
  [ -n "$holder" ] && [[ " $operator_pods " == *" $holder "* ]]
}
until_ok 60 "the Lease is held by one of the operator pods" leader_is_a_pod
configuration="$(kubectl get mutatingwebhookconfiguration -l app.kubernetes.io/instance="$release" -o name | head -n 1)"
until_ok 60 "caBundle set on $configuration (the operator's own CA)" \
  test -n "$(kubectl get "$configuration" -o jsonpath='{.webhooks[0].clientConfig.caBundle}')"

# apply_example <dir> <namespace> <image var>: the example as it is, through an overlay that only
# names the local images and the ingress class here.
apply_example() {
  local dir=$1 ns=$2 image=$3 overlay="$work/overlay-$1"
  mkdir -p "$overlay"
  cp -r "$repo/manifests/examples/$dir" "$overlay/base"
  cat >"$overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [base]
images:
  - name: switchboard.local/$(basename "$(repo_of "$image")")
    newName: $(repo_of "$image")
    newTag: "$(tag_of "$image")"
patches:
  - target: { kind: RealtimeCluster, name: $rtc }
    patch: |
      - { op: replace, path: /spec/ingress/className, value: traefik }
      - { op: add, path: /spec/backplane/managed/image, value: "$SWITCHBOARD_REDIS_IMAGE" }
EOF
  kubectl apply -k "$overlay" 2>&1 | grep -v 'Sorting order' | sed 's/^/    /'
}

# pods_injected <namespace>: 3 app pods, each with switchboard-sidecar first as a native sidecar
# (restartPolicy Always), REDIS_URL at it, every container ready.
pods_injected() {
  local rows
  rows="$(kubectl -n "$1" get pods -l app=chat -o jsonpath='{range .items[*]}{.metadata.name}|{.spec.initContainers[0].name}|{.spec.initContainers[0].restartPolicy}|{.spec.containers[?(@.name=="app")].env[?(@.name=="REDIS_URL")].value}|{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')"
  [ "$(grep -c . <<<"$rows")" -eq 3 ] || return 1
  ! grep -v -E '^[^|]+\|switchboard-sidecar\|Always\|redis://127\.0\.0\.1:6379\|True$' <<<"$rows"
}

for example in python-socketio-chat:chat-python:SWITCHBOARD_CHAT_PYTHON_IMAGE node-socketio-chat:chat-node:SWITCHBOARD_CHAT_NODE_IMAGE; do
  IFS=: read -r dir app_ns image_var <<<"$example"
  step "$dir: kubectl apply -k (3 replicas, managed Redis, className traefik)"
  apply_example "$dir" "$app_ns" "${!image_var}"
  [ "$(kubectl get namespace "$app_ns" -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}')" = restricted ] ||
    fail "namespace $app_ns does not enforce Pod Security restricted"
  ok "namespace $app_ns enforces Pod Security restricted"
  until_ok 180 "$app_ns: the managed Redis pod Ready" \
    kubectl -n "$app_ns" wait pod -l app.kubernetes.io/instance="$rtc",app.kubernetes.io/component=backplane --for=condition=Ready --timeout=1s
  until_ok 240 "$app_ns: 3 pods Ready, each with the injected native sidecar" pods_injected "$app_ns"
  until_ok 120 "$app_ns: RealtimeCluster Ready" condition_is "$app_ns" Ready True
done

step "socket.io clients through Traefik with its affinity cookie"
"$venv/bin/python" "$repo/tests/e2e/chat_check.py" --url http://chat-python.localhost:8000 \
  --resolve "chat-python.localhost:$traefik_ip" --attempts 20 | sed 's/^/    /'
ok "python-socketio: polling then WebSocket, a second client long-polling on another pod, a message across"
node "$repo/tests/e2e/node_chat_check.js" http://chat-node.localhost:8000 "chat-node.localhost:$traefik_ip" | sed 's/^/    /'
ok "Node socket.io-client: both ways across pods, fetchSockets() exact"

app_ns=chat-python
step "$app_ns: replicas: 3 (Sentinel), then the Redis primary is deleted while messages flow"
kubectl -n "$app_ns" patch rtc "$rtc" --type=merge -p '{"spec":{"backplane":{"managed":{"replicas":3}}}}' >/dev/null
sts="$(kubectl -n "$app_ns" get sts -l app.kubernetes.io/instance="$rtc" -o name | head -n 1)"
until_ok 60 "$sts at 3 replicas" test "$(kubectl -n "$app_ns" get "$sts" -o jsonpath='{.spec.replicas}')" = 3
kubectl -n "$app_ns" rollout status "$sts" --timeout=5m >/dev/null
ok "kubectl rollout status $sts"
# The app pods carry the new (Sentinel) URL only once recreated.
kubectl -n "$app_ns" rollout restart deployment/chat >/dev/null
kubectl -n "$app_ns" rollout status deployment/chat --timeout=5m >/dev/null
until_ok 180 "RealtimeCluster Ready with Sentinel" condition_is "$app_ns" Ready True
primary_pod() {
  local host
  # shellcheck disable=SC2016 # expanded by the container's shell
  host="$(kubectl -n "$app_ns" exec "${sts#*/}-0" -c sentinel -- sh -c \
    'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -p 26379 --raw SENTINEL GET-MASTER-ADDR-BY-NAME "$MASTER_NAME"' | head -n 1)"
  echo "${host%%.*}"
}
primary="$(primary_pod)"
[ -n "$primary" ] || fail "no Sentinel names a primary"
ok "the Sentinels name $primary the primary"
"$venv/bin/python" "$repo/tests/e2e/node_clients.py" --url http://chat-python.localhost:8000 \
  --resolve "chat-python.localhost:$traefik_ip" --expect-no-disconnect --after 150 \
  --during "kubectl -n $app_ns delete pod $primary --wait=false >/dev/null" | sed 's/^/    /'
until_ok 60 "a new primary elected" test "$(primary_pod)" != "$primary"
ok "failover to $(primary_pod): no disconnect, no message lost"

step "$app_ns: kubectl rollout restart while clients talk"
"$venv/bin/python" "$repo/tests/e2e/node_clients.py" --url http://chat-python.localhost:8000 \
  --resolve "chat-python.localhost:$traefik_ip" --after 40 \
  --during "kubectl -n $app_ns rollout restart deployment/chat >/dev/null && kubectl -n $app_ns rollout status deployment/chat --timeout=5m >/dev/null" \
  --current-pods "kubectl -n $app_ns get pods -l app=chat -o go-template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{.metadata.name}} {{end}}{{end}}'" |
  sed 's/^/    /'
# A pod on an older sidecar configuration would make it False, ConfigurationOutdated, naming it.
until_ok 60 "SidecarsReady True: the status names no outdated pod" condition_is "$app_ns" SidecarsReady True

step "bad input on a real cluster"
kubectl create namespace journey-bad >/dev/null
kubectl label namespace journey-bad pod-security.kubernetes.io/enforce=restricted >/dev/null
if kubectl -n journey-bad apply -f - >"$work/bad.log" 2>&1 <<EOF; then
apiVersion: switchboard.dev/v1alpha1
kind: RealtimeCluster
metadata: { name: bad }
spec:
  selector: { matchLabels: { app: bad } }
  framework: python-socketio
  backplane: { managed: { replicas: 2 } }
EOF
  fail "a RealtimeCluster with replicas: 2 was accepted"
fi
grep -q 'spec.backplane.managed.replicas' "$work/bad.log" || fail "the refusal does not name the field: $(cat "$work/bad.log")"
ok "refused: $(grep -o 'spec.backplane.managed.replicas[^"]*' "$work/bad.log" | head -n 1)"
app_ns=journey-bad
kubectl -n journey-bad create secret generic redis --from-literal=url=redis://nowhere.journey-bad.svc:6379 >/dev/null
kubectl -n journey-bad apply -f - >/dev/null <<EOF
apiVersion: switchboard.dev/v1alpha1
kind: RealtimeCluster
metadata: { name: $rtc }
spec:
  selector: { matchLabels: { app: chat } }
  framework: python-socketio
  app: { port: 5000 }
  backplane: { external: { urlSecretRef: { name: redis, key: url } } }
EOF
kubectl -n journey-bad create configmap chat-app --from-file="$repo/manifests/examples/python-socketio-chat/app.py" >/dev/null
sed -e "s#image: chat-python .*#image: $SWITCHBOARD_CHAT_PYTHON_IMAGE#" -e 's/replicas: 3/replicas: 1/' \
  "$repo/manifests/examples/python-socketio-chat/deployment.yaml" | kubectl -n journey-bad apply -f - >/dev/null
until_ok 120 "BackplaneReady=False" condition_is journey-bad BackplaneReady False
ok "BackplaneReady: $(condition journey-bad BackplaneReady)"
bad_ip() { kubectl -n journey-bad get pods -l app=chat -o jsonpath='{.items[0].status.podIP}'; }
until_ok 120 "the app pod has an IP" test -n "$(bad_ip)"
readyz_503() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://$(bad_ip):9091/readyz")" = 503 ]; }
until_ok 60 "the sidecar's /readyz answers 503" readyz_503
sleep_until=$((SECONDS + 20))
while ((SECONDS < sleep_until)); do
  restarts="$(kubectl -n journey-bad get pods -l app=chat -o jsonpath='{range .items[0].status.initContainerStatuses[*]}{.restartCount}{end}{range .items[0].status.containerStatuses[*]}{.restartCount}{end}')"
  [ "$restarts" = "00" ] || fail "containers restarted ($restarts) with an unreachable Redis"
  sleep 2
done
ok "20 s later: not Ready, no container restarted"
kubectl delete namespace journey-bad --wait=false >/dev/null

step "kubectl delete rtc: everything the operator made is removed"
for app_ns in chat-python chat-node; do
  kubectl -n "$app_ns" delete rtc "$rtc" --wait=true --timeout=2m >/dev/null
  until_ok 120 "$app_ns: no StatefulSet, Service, Secret, ConfigMap, Ingress or PDB of $rtc left" \
    test -z "$(kubectl -n "$app_ns" get sts,svc,secret,configmap,ingress,pdb -l app.kubernetes.io/instance="$rtc" -o name)"
done

step "helm uninstall: nothing of $release left"
"$helm" uninstall "$release" -n "$operator_ns" --wait --timeout 2m >/dev/null
leftovers() {
  kubectl get all,sa,role,rolebinding,secret,configmap,lease -n "$operator_ns" -l app.kubernetes.io/instance="$release" -o name
  kubectl get clusterrole,clusterrolebinding,mutatingwebhookconfiguration -l app.kubernetes.io/instance="$release" -o name
}
until_ok 120 "no object labelled app.kubernetes.io/instance=$release" test -z "$(leftovers)"

step "PASS ($((SECONDS - started))s)"
