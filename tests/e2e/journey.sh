# shellcheck shell=bash disable=SC2154,SC2016 # SC2154: repo, work, helm, ingress_* and pull_policy are the caller's; SC2016: until_eval evaluates its single-quoted code
# The user's journey, as steps that each assert: sourced by tests/e2e/node.sh (a real node on this
# machine) and tests/e2e/kind/run.sh (kind, for Docker users), so both run the same checks. The
# caller brings up the cluster and its ingress, then runs `journey_all`.
#
# The caller sets:
#   repo, work           the repository and a scratch directory (removed by the caller)
#   KUBECONFIG, helm     the cluster and the helm binary
#   ingress_class        the IngressClass the examples use (traefik)
#   ingress_ip           an address of this machine's that reaches the ingress's web port
#   ingress_port         that port
#   pull_policy          the chart's image.pullPolicy (Never where images are imported by hand)
#   SWITCHBOARD_OPERATOR_IMAGE, SWITCHBOARD_SIDECAR_IMAGE, SWITCHBOARD_CHAT_PYTHON_IMAGE,
#   SWITCHBOARD_CHAT_NODE_IMAGE: image refs; SWITCHBOARD_REDIS_IMAGE: the managed Redis image
#   (empty: the operator's default)
#
# Steps (journey_all):
#   install    helm install charts/switchboard into a namespace enforcing Pod Security restricted:
#              2 operator pods Ready, one leader (Lease), the webhook's caBundle set
#   examples   both chat examples (manifests/examples/*-socketio-chat, through a kustomize
#              overlay that only names the images and the ingress class): managed Redis pods,
#              3 app pods each with the injected native sidecar, Ready, namespaces restricted
#   clients    real socket.io clients through the ingress with its affinity cookie: Python
#              (chat_check.py) and Node (node_chat_check.js: fetchSockets() across pods exact)
#   failover   replicas: 3 (Sentinel): the Redis primary pod is deleted while numbered messages
#              flow; no disconnect, none lost (node_clients.py)
#   rollout    kubectl rollout restart: clients reconnect and delivery resumes; no outdated pod
#   routing    affinity: session-routing: the app Service targets the sidecars' fronts, no cookie;
#              a long-polling client spread over the pods by the ingress keeps its session, and a
#              message crosses pods (chat_check.py --expect-no-cookie)
#   workers    spec.app.workerPorts: a second app container on 5001 in each pod; hand-made
#              polling sessions through the ingress are each answered by the worker that opened
#              them, the second workers get sessions, and chat_check.py passes again
#   bad_input  an invalid RealtimeCluster is refused naming the field; an external Redis that
#              does not exist gives BackplaneReady=False saying what to fix, /readyz 503, no
#              restarts
#   teardown   kubectl delete rtc removes what the operator made; helm uninstall leaves nothing
# On failure the caller's EXIT trap runs journey_diagnostics: events, pod logs, the
# RealtimeClusters' status and the sidecars' metrics.

release=switchboard
operator_ns=switchboard-system
rtc=chat
app_ns=""
# shellcheck source=tests/e2e/lib.sh
. "$repo/tests/e2e/lib.sh"

condition() { # <namespace> <type>: the RealtimeCluster condition's "status reason: message"
  kubectl -n "$1" get rtc "$rtc" -o jsonpath="{.status.conditions[?(@.type==\"$2\")].status} {.status.conditions[?(@.type==\"$2\")].reason}: {.status.conditions[?(@.type==\"$2\")].message}"
}
condition_is() { [[ "$(condition "$1" "$2")" == "$3"* ]]; }

repo_of() { echo "${1%:*}"; }
tag_of() { echo "${1##*:}"; }

# sidecar_get <namespace> <pod> <path>: the sidecar's HTTP endpoint through the API server's pod
# proxy, which reaches pods wherever the cluster runs (a node here, a container under kind).
sidecar_get() { kubectl get --raw "/api/v1/namespaces/$1/pods/$2:9091/proxy$3"; }

journey_diagnostics() {
  printf '\n----- diagnostics\n'
  kubectl get rtc,deploy,sts,pods,svc,ingress -A -o wide 2>&1 | grep -v '^kube-system' || true
  local ns pod
  for ns in chat-python chat-node journey-bad; do
    kubectl -n "$ns" describe rtc 2>/dev/null | sed -n '/^Status:/,$p' || true
  done
  kubectl get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 40 || true
  printf '\n----- operator logs\n'
  kubectl -n "$operator_ns" logs -l app.kubernetes.io/instance="$release" --tail=40 --prefix 2>&1 || true
  for ns in chat-python chat-node; do
    printf '\n----- %s pods (app, sidecar, redis)\n' "$ns"
    kubectl -n "$ns" logs -l app=chat --all-containers --tail=15 --prefix 2>&1 || true
    kubectl -n "$ns" logs -l app=chat --all-containers --previous --tail=15 --prefix 2>/dev/null || true
    kubectl -n "$ns" logs -l app.kubernetes.io/instance="$rtc" --all-containers --tail=15 --prefix 2>&1 || true
    # The sidecars' own view: link state, reconnects, buffered and dropped messages.
    for pod in $(kubectl -n "$ns" get pods -l app=chat -o jsonpath='{.items[*].metadata.name}' 2>/dev/null); do
      printf -- '--- sidecar metrics %s\n' "$pod"
      sidecar_get "$ns" "$pod" /metrics 2>&1 | grep -E '^switchboard_' | grep -v '_bucket' | head -n 30 || true
    done
  done
}

# The Python and Node socket.io clients the journey drives.
journey_clients_setup() {
  venv="$repo/tests/.venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$repo/tests/requirements.txt"
  [ -d "$repo/tests/node_modules/socket.io-client" ] ||
    (cd "$repo/tests" && npm ci --no-audit --no-fund --loglevel=error)
  ok "python-socketio clients ($venv), socket.io-client (tests/node_modules)"
}

journey_install() {
  step "helm install $release with the images, in a namespace enforcing restricted"
  kubectl create namespace "$operator_ns" >/dev/null
  kubectl label namespace "$operator_ns" pod-security.kubernetes.io/enforce=restricted >/dev/null
  "$helm" install "$release" "$repo/charts/switchboard" -n "$operator_ns" --wait --timeout 3m \
    --set image.repository="$(repo_of "$SWITCHBOARD_OPERATOR_IMAGE")" \
    --set image.tag="$(tag_of "$SWITCHBOARD_OPERATOR_IMAGE")" --set image.pullPolicy="$pull_policy" \
    --set sidecar.image.repository="$(repo_of "$SWITCHBOARD_SIDECAR_IMAGE")" \
    --set sidecar.image.tag="$(tag_of "$SWITCHBOARD_SIDECAR_IMAGE")" >"$work/helm.log" 2>&1 ||
    fail "helm install: $(cat "$work/helm.log")"
  local deployment ready configuration
  deployment="$(kubectl -n "$operator_ns" get deploy -l app.kubernetes.io/instance="$release" -o name | head -n 1)"
  kubectl -n "$operator_ns" rollout status "$deployment" --timeout=2m >/dev/null
  ready="$(kubectl -n "$operator_ns" get "$deployment" -o jsonpath='{.status.readyReplicas}')"
  [ "$ready" = 2 ] || fail "$ready of 2 operator pods Ready"
  ok "kubectl rollout status $deployment: 2 pods Ready"
  operator_pods="$(kubectl -n "$operator_ns" get pods -l app.kubernetes.io/instance="$release" -o jsonpath='{.items[*].metadata.name}')"
  until_ok 60 "the Lease is held by one of the operator pods" leader_is_a_pod
  configuration="$(kubectl get mutatingwebhookconfiguration -l app.kubernetes.io/instance="$release" -o name | head -n 1)"
  until_eval 60 "caBundle set on $configuration (the operator's own CA)" \
    'test -n "$(kubectl get "$configuration" -o jsonpath="{.webhooks[0].clientConfig.caBundle}")"'
}

leader_is_a_pod() {
  local holder
  holder="$(kubectl -n "$operator_ns" get lease -o jsonpath='{.items[*].spec.holderIdentity}')"
  [ -n "$holder" ] && [[ " $operator_pods " == *" $holder "* ]]
}

# apply_example <dir> <image>: the example as it is, through an overlay that only names the
# images and the ingress class.
apply_example() {
  local dir=$1 image=$2 overlay="$work/overlay-$1"
  mkdir -p "$overlay"
  cp -r "$repo/manifests/examples/$dir" "$overlay/base"
  cat >"$overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [base]
# A base's sortOptions do not carry into an overlay: without this, kubectl applies the
# Deployment before the RealtimeCluster (custom kinds go last) and the first pods can be created
# before the injector has a cluster for them (seen on the real node: one pod of three).
sortOptions:
  order: fifo
images:
  - name: switchboard.local/$(basename "$(repo_of "$image")")
    newName: $(repo_of "$image")
    newTag: "$(tag_of "$image")"
patches:
  - target: { kind: RealtimeCluster, name: $rtc }
    patch: |
      - { op: replace, path: /spec/ingress/className, value: $ingress_class }
EOF
  if [ -n "${SWITCHBOARD_REDIS_IMAGE:-}" ]; then
    echo "      - { op: add, path: /spec/backplane/managed/image, value: \"$SWITCHBOARD_REDIS_IMAGE\" }" >>"$overlay/kustomization.yaml"
  fi
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

journey_examples() {
  local example dir image_var
  for example in python-socketio-chat:chat-python:SWITCHBOARD_CHAT_PYTHON_IMAGE node-socketio-chat:chat-node:SWITCHBOARD_CHAT_NODE_IMAGE; do
    IFS=: read -r dir app_ns image_var <<<"$example"
    step "$dir: kubectl apply -k (3 replicas, managed Redis, className $ingress_class)"
    apply_example "$dir" "${!image_var}"
    [ "$(kubectl get namespace "$app_ns" -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}')" = restricted ] ||
      fail "namespace $app_ns does not enforce Pod Security restricted"
    ok "namespace $app_ns enforces Pod Security restricted"
    until_ok 180 "$app_ns: the managed Redis pod Ready" \
      kubectl -n "$app_ns" wait pod -l app.kubernetes.io/instance="$rtc",app.kubernetes.io/component=backplane --for=condition=Ready --timeout=1s
    until_ok 240 "$app_ns: 3 pods Ready, each with the injected native sidecar" pods_injected "$app_ns"
    until_ok 120 "$app_ns: RealtimeCluster Ready" condition_is "$app_ns" Ready True
    backplane_speaks_tls_only "$app_ns"
  done
}

# backplane_speaks_tls_only <namespace>: the sidecars' URL is rediss://, and the managed Redis
# answers a TLS client (verifying the operator's CA) but no clear-text one.
backplane_speaks_tls_only() {
  local url pod
  url="$(kubectl -n "$1" get configmap "$rtc-sidecar" -o jsonpath='{.data.SWITCHBOARD_UPSTREAM_URL}')"
  case "$url" in rediss://*) ;; *) fail "$1: the sidecars' backplane URL is not TLS: $url" ;; esac
  pod="$(kubectl -n "$1" get pods -l app.kubernetes.io/instance="$rtc",app.kubernetes.io/component=backplane -o name | head -n 1)"
  # shellcheck disable=SC2016 # expanded by the container's shell
  [ "$(kubectl -n "$1" exec "${pod#*/}" -c redis -- sh -c \
    'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli --tls --cacert /tls/ca.crt -h localhost -p 6379 PING')" = PONG ] ||
    fail "$1: the managed Redis does not answer over TLS"
  # shellcheck disable=SC2016
  if kubectl -n "$1" exec "${pod#*/}" -c redis -- sh -c \
    'REDISCLI_AUTH="$REDIS_PASSWORD" timeout 3 redis-cli -p 6379 PING' 2>/dev/null | grep -q PONG; then
    fail "$1: the managed Redis answers in clear text"
  fi
  ok "$1: the backplane speaks TLS only ($url), verified against the operator's CA"
}

journey_clients() {
  step "socket.io clients through the ingress with its affinity cookie"
  "$venv/bin/python" "$repo/tests/e2e/chat_check.py" --url "http://chat-python.localhost:$ingress_port" \
    --resolve "chat-python.localhost:$ingress_ip" --attempts 20 | sed 's/^/    /'
  ok "python-socketio: polling then WebSocket, a second client long-polling on another pod, a message across"
  node "$repo/tests/e2e/node_chat_check.js" "http://chat-node.localhost:$ingress_port" "chat-node.localhost:$ingress_ip" | sed 's/^/    /'
  ok "Node socket.io-client: both ways across pods, fetchSockets() exact"
}

# handshakes_answered <namespace> <n>: n Engine.IO polling handshakes in a row through the
# ingress, each answered 200 within 3 s. Right after a rollout the ingress can still hold
# endpoints of deleted pods for a few seconds (its list lags the EndpointSlice); a request sent
# there hangs, and a client whose requests the balancer spreads over every pod would hang with it.
handshakes_answered() {
  "$venv/bin/python" - "http://$1.localhost:$ingress_port/socket.io/?EIO=4&transport=polling" "$ingress_ip" "$2" <<'PY'
import http.client, sys, urllib.parse
url, address, count = urllib.parse.urlsplit(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for _ in range(count):
    conn = http.client.HTTPConnection(address, url.port, timeout=3)
    conn.request("GET", f"{url.path}?{url.query}", headers={"Host": url.netloc})
    if conn.getresponse().status != 200:
        sys.exit(1)
    conn.close()
PY
}

primary_pod() {
  local host
  # shellcheck disable=SC2016 # expanded by the container's shell
  host="$(kubectl -n "$app_ns" exec "${sts#*/}-0" -c sentinel -- sh -c \
    'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli $REDIS_CLI_TLS -p 26379 --raw SENTINEL GET-MASTER-ADDR-BY-NAME "$MASTER_NAME"' | head -n 1)"
  echo "${host%%.*}"
}

journey_failover() {
  app_ns=chat-python
  step "$app_ns: replicas: 3 (Sentinel), then the Redis primary is deleted while messages flow"
  kubectl -n "$app_ns" patch rtc "$rtc" --type=merge -p '{"spec":{"backplane":{"managed":{"replicas":3}}}}' >/dev/null
  sts="$(kubectl -n "$app_ns" get sts -l app.kubernetes.io/instance="$rtc" -o name | head -n 1)"
  until_eval 60 "$sts at 3 replicas" 'test "$(kubectl -n "$app_ns" get "$sts" -o jsonpath="{.spec.replicas}")" = 3'
  kubectl -n "$app_ns" rollout status "$sts" --timeout=5m >/dev/null
  ok "kubectl rollout status $sts"
  # The app pods carry the new (Sentinel) URL only once recreated.
  kubectl -n "$app_ns" rollout restart deployment/chat >/dev/null
  kubectl -n "$app_ns" rollout status deployment/chat --timeout=5m >/dev/null
  until_ok 180 "RealtimeCluster Ready with Sentinel" condition_is "$app_ns" Ready True
  until_ok 60 "the ingress sends requests to the new pods only (9 handshakes in a row answered)" \
    handshakes_answered "$app_ns" 9
  local primary
  primary="$(primary_pod)"
  [ -n "$primary" ] || fail "no Sentinel names a primary"
  ok "the Sentinels name $primary the primary"
  "$venv/bin/python" "$repo/tests/e2e/node_clients.py" --url "http://chat-python.localhost:$ingress_port" \
    --resolve "chat-python.localhost:$ingress_ip" --expect-no-disconnect --after 150 \
    --during "kubectl -n $app_ns delete pod $primary --wait=false >/dev/null" | sed 's/^/    /'
  until_eval 60 "a new primary elected" 'test "$(primary_pod)" != "$primary"'
  ok "failover to $(primary_pod): no disconnect, no message lost"
}

journey_rollout() {
  app_ns=chat-python
  step "$app_ns: kubectl rollout restart while clients talk"
  "$venv/bin/python" "$repo/tests/e2e/node_clients.py" --url "http://chat-python.localhost:$ingress_port" \
    --resolve "chat-python.localhost:$ingress_ip" --after 40 \
    --during "kubectl -n $app_ns rollout restart deployment/chat >/dev/null && kubectl -n $app_ns rollout status deployment/chat --timeout=5m >/dev/null" \
    --current-pods "kubectl -n $app_ns get pods -l app=chat -o go-template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{.metadata.name}} {{end}}{{end}}'" |
    sed 's/^/    /'
  # A pod on an older sidecar configuration would make it False, ConfigurationOutdated, naming it.
  until_ok 60 "SidecarsReady True: the status names no outdated pod" condition_is "$app_ns" SidecarsReady True
}

# session_routed <namespace>: the app Service targets the sidecars' fronts and carries no sticky
# cookie, and the fleet's front secret exists.
session_routed() {
  [ "$(kubectl -n "$1" get svc "$rtc-app" -o jsonpath='{.spec.ports[0].targetPort}')" = 9092 ] &&
    ! kubectl -n "$1" get svc "$rtc-app" -o jsonpath='{.metadata.annotations}' | grep -q sticky &&
    kubectl -n "$1" get secret "$rtc-front" >/dev/null 2>&1 &&
    # Only the fleet's pods may reach the peer port (enforced where the CNI plugin enforces
    # NetworkPolicies; this node's bridge plugin does not, so here it is checked, not enforced).
    [ "$(kubectl -n "$1" get networkpolicy "$rtc-front-peers" -o jsonpath='{.spec.ingress[1].ports[0].port}')" = 9093 ]
}

journey_routing() {
  app_ns=chat-python
  step "$app_ns: affinity: session-routing, no cookie: the sidecars route each session to its pod"
  kubectl -n "$app_ns" patch rtc "$rtc" --type=merge -p '{"spec":{"ingress":{"affinity":"session-routing"}}}' >/dev/null
  until_ok 60 "the app Service targets the fronts, no sticky cookie, the front Secret, the peer port's NetworkPolicy" session_routed "$app_ns"
  # The front is set up at injection: the pods are recreated.
  kubectl -n "$app_ns" rollout restart deployment/chat >/dev/null
  kubectl -n "$app_ns" rollout status deployment/chat --timeout=5m >/dev/null
  until_ok 180 "RealtimeCluster Ready with session routing" condition_is "$app_ns" Ready True
  until_ok 60 "the ingress sends requests to the new pods only (9 handshakes in a row answered)" \
    handshakes_answered "$app_ns" 9
  [ "$(kubectl -n "$app_ns" get rtc "$rtc" -o jsonpath='{.spec.ingress.affinity}')" = session-routing ] ||
    fail "the RealtimeCluster does not say session-routing"
  "$venv/bin/python" "$repo/tests/e2e/chat_check.py" --url "http://chat-python.localhost:$ingress_port" \
    --resolve "chat-python.localhost:$ingress_ip" --attempts 20 --expect-no-cookie | sed 's/^/    /'
  # Routing, not luck: the ingress spread the session's requests and the fronts forwarded some.
  local forwarded=0 pod n
  for pod in $(kubectl -n "$app_ns" get pods -l app=chat -o jsonpath='{.items[*].metadata.name}'); do
    n="$(sidecar_get "$app_ns" "$pod" /metrics | awk '/^switchboard_sidecar_front_requests_total\{route="forwarded"\}/ { print int($2) }')"
    forwarded=$((forwarded + ${n:-0}))
  done
  ((forwarded > 0)) || fail "no front forwarded a request: the ingress kept every request on one pod"
  ok "python-socketio through the ingress with no cookie: long-polling on one session, a message across pods; $forwarded request(s) forwarded between fronts"
}

# second_worker_patch <namespace>: a JSON patch adding container app-2 to the chat Deployment,
# the same app again on port 5001: a pod whose app runs two workers, one port each.
second_worker_patch() {
  kubectl -n "$1" get deployment chat -o json | "$venv/bin/python" -c '
import json, sys
app = json.load(sys.stdin)["spec"]["template"]["spec"]["containers"][0]
app["name"] = "app-2"
app["env"] = [e for e in app.get("env", []) if e["name"] != "PORT"] + [{"name": "PORT", "value": "5001"}]
app["ports"] = [{"name": "http-2", "containerPort": 5001}]
for probe in ("readinessProbe", "livenessProbe"):
    if probe in app:
        app[probe]["httpGet"]["port"] = 5001
print(json.dumps([{"op": "add", "path": "/spec/template/spec/containers/-", "value": app}]))'
}
workers_configured() {
  [ "$(kubectl -n "$1" get configmap "$rtc-sidecar" -o jsonpath='{.data.SWITCHBOARD_FRONT_APP}')" = 127.0.0.1:5000,127.0.0.1:5001 ]
}
# polling_session: one Engine.IO session opened by hand through the ingress (a polling handshake,
# then a POST of the socket.io CONNECT for its sid, each on a new connection); prints the POST's
# answer, which only the worker that opened the session gives as "ok" (any other: 400).
polling_session() {
  local url="http://chat-python.localhost:$ingress_port/socket.io/?EIO=4&transport=polling" open sid
  local resolve=(--resolve "chat-python.localhost:$ingress_port:$ingress_ip")
  open="$(curl -sS --max-time 10 "${resolve[@]}" "$url")" || return 1
  sid="$(printf '%s' "$open" | "$venv/bin/python" -c 'import json, sys; print(json.loads(sys.stdin.read()[1:])["sid"])')" ||
    { echo "handshake answered: $open"; return 1; }
  curl -sS --max-time 10 "${resolve[@]}" -X POST -H 'Content-Type: text/plain;charset=UTF-8' --data-binary 40 "$url&sid=$sid"
}

journey_workers() {
  app_ns=chat-python
  step "$app_ns: two app workers in each pod (spec.app.workerPorts), still no cookie: each session stays on its worker"
  kubectl -n "$app_ns" patch rtc "$rtc" --type=merge -p '{"spec":{"app":{"workerPorts":[5000,5001]}}}' >/dev/null
  until_ok 60 "the sidecar ConfigMap names both workers" workers_configured "$app_ns"
  kubectl -n "$app_ns" patch deployment chat --type=json -p "$(second_worker_patch "$app_ns")" >/dev/null
  kubectl -n "$app_ns" rollout status deployment/chat --timeout=5m >/dev/null
  until_ok 180 "RealtimeCluster Ready with two workers per pod" condition_is "$app_ns" Ready True
  until_ok 60 "the ingress sends requests to the new pods only (9 handshakes in a row answered)" \
    handshakes_answered "$app_ns" 9
  local i answer pod second=0 n
  for i in $(seq 1 12); do
    answer="$(polling_session)" || fail "hand-made polling session $i through the ingress failed: $answer"
    [ "$(printf '%s' "$answer" | tr '[:upper:]' '[:lower:]')" = ok ] ||
      fail "hand-made polling session $i: the POST for its sid got '$answer', not ok: it reached a worker that does not know it"
  done
  # Only the pods that stay: an old pod still terminating has no app-2 to read.
  for pod in $(kubectl -n "$app_ns" get pods -l app=chat -o go-template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{.metadata.name}} {{end}}{{end}}'); do
    n="$(kubectl -n "$app_ns" logs "$pod" -c app-2 | grep -c ' connected$' || true)"
    second=$((second + n))
  done
  ((second > 0)) || fail "no session was opened on the second worker (container app-2) of any pod"
  "$venv/bin/python" "$repo/tests/e2e/chat_check.py" --url "http://chat-python.localhost:$ingress_port" \
    --resolve "chat-python.localhost:$ingress_ip" --attempts 20 --expect-no-cookie | sed 's/^/    /'
  ok "12 polling sessions by hand through the ingress, each answered by its own worker ($second opened on the second workers); long-polling and a message across pods"
}

bad_pod() { kubectl -n journey-bad get pods -l app=chat -o jsonpath='{.items[0].metadata.name}'; }
bad_pod_running() { [ "$(kubectl -n journey-bad get pods -l app=chat -o jsonpath='{.items[0].status.phase}')" = Running ]; }
# The sidecar's /readyz from inside the pod (the app container has Python): the API server's pod
# proxy turns a 503 into its own "ServiceUnavailable" and drops the answer, which names the cause.
readyz() {
  kubectl -n journey-bad exec "$(bad_pod)" -c app -- python -c '
import urllib.error, urllib.request
try:
    answer = urllib.request.urlopen("http://127.0.0.1:9091/readyz", timeout=5)
except urllib.error.HTTPError as e:
    answer = e
print(answer.status, answer.read().decode().strip())'
}
readyz_503() { readyz 2>&1 | grep -q '^503 not ready: the backplane is not connected'; }

journey_bad_input() {
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
  until_ok 120 "the app pod is running" bad_pod_running
  until_ok 60 "the sidecar's /readyz answers 503" readyz_503
  ok "/readyz: $(readyz 2>&1 | tail -n 1)"
  # Not Ready must not mean restarting: watch the containers for a while.
  local until=$((SECONDS + 20)) restarts
  while ((SECONDS < until)); do
    restarts="$(kubectl -n journey-bad get pods -l app=chat -o jsonpath='{range .items[0].status.initContainerStatuses[*]}{.restartCount}{end}{range .items[0].status.containerStatuses[*]}{.restartCount}{end}')"
    [ "$restarts" = "00" ] || fail "containers restarted ($restarts) with an unreachable Redis"
    sleep 2
  done
  ok "20 s later: not Ready, no container restarted"
  kubectl delete namespace journey-bad --wait=false >/dev/null
}

leftovers() {
  kubectl get all,sa,role,rolebinding,secret,configmap,lease -n "$operator_ns" -l app.kubernetes.io/instance="$release" -o name
  kubectl get clusterrole,clusterrolebinding,mutatingwebhookconfiguration -l app.kubernetes.io/instance="$release" -o name
}

journey_teardown() {
  step "kubectl delete rtc: everything the operator made is removed"
  for app_ns in chat-python chat-node; do
    kubectl -n "$app_ns" delete rtc "$rtc" --wait=true --timeout=2m >/dev/null
    until_eval 120 "$app_ns: no StatefulSet, Service, Secret, ConfigMap, Ingress or PDB of $rtc left" \
      'test -z "$(kubectl -n "$app_ns" get sts,svc,secret,configmap,ingress,pdb -l app.kubernetes.io/instance="$rtc" -o name)"'
  done
  step "helm uninstall: nothing of $release left"
  "$helm" uninstall "$release" -n "$operator_ns" --wait --timeout 2m >/dev/null
  until_eval 120 "no object labelled app.kubernetes.io/instance=$release" 'test -z "$(leftovers)"'
}

journey_all() {
  journey_install
  journey_examples
  journey_clients
  journey_failover
  journey_rollout
  journey_routing
  journey_workers
  journey_bad_input
  journey_teardown
  step "PASS ($((SECONDS - started))s)"
}
