#!/usr/bin/env bash
# Builds (or reuses) the real control-plane binaries the tests run:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, helm, and for the real
#   node (tests/node/) kubelet and kube-proxy, built in the same go build so they share its packages
# into ${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}/controlplane/<k8s-version>/bin/.
# Kubernetes and etcd versions come from go.mod beside this script; kwok and helm
# are pinned below. A warm run (binaries present, stamp matching) takes seconds.
# Prints the bin directory on its last line (use it as SWITCHBOARD_CONTROLPLANE_BIN).
set -euo pipefail

KWOK_VERSION=v0.7.0
HELM_VERSION=v3.19.5

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
start=$SECONDS
log() { printf '[controlplane %4ds] %s\n' "$((SECONDS - start))" "$*" >&2; }

mod_json=$(go mod edit -json "$here/go.mod")
version_of() { jq -r --arg p "$1" '.Require[] | select(.Path == $p) | .Version' <<<"$mod_json"; }
k8s_version=$(version_of k8s.io/kubernetes)
etcd_version=$(version_of go.etcd.io/etcd/server/v3)
[[ $k8s_version =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || { log "unexpected k8s version '$k8s_version' in go.mod"; exit 1; }
k8s_minor=${BASH_REMATCH[1]}
staging_version="v0.${k8s_minor}.${BASH_REMATCH[2]}"

root="${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}/controlplane/$k8s_version"
bin="$root/bin"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kwok helm)
stamp_want="kubernetes=$k8s_version etcd=$etcd_version kwok=$KWOK_VERSION helm=$HELM_VERSION go=$(go env GOVERSION) gomod=$(sha256sum "$here/go.mod" | cut -c1-16)"

all_present() { local b; for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || return 1; done; }
if all_present && [[ -f "$bin/.stamp" && "$(<"$bin/.stamp")" == "$stamp_want" ]]; then
  log "cached: $stamp_want"
  echo "$bin"
  exit 0
fi

log "building into $bin ($stamp_want)"
mkdir -p "$bin" "$root/src"
rm -f "$bin/.stamp"
export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"

# Build in a copy of the wrapper module so the generated replace lines and go.sum stay out of the repo.
src="$root/src"
cp "$here/go.mod" "$src/go.mod"
rm -f "$src/go.sum"
cd "$src"

log "downloading k8s.io/kubernetes@$k8s_version go.mod"
upstream_mod=$(go mod download -json "k8s.io/kubernetes@$k8s_version" | jq -r .GoMod)
# k8s.io/kubernetes replaces its staging modules with ./staging/...; a consumer must point each at the
# published module of the matching v0.Y.Z instead. Generated, so a version bump needs no edits here.
mapfile -t staging < <(go mod edit -json "$upstream_mod" | jq -r '.Replace[] | select(.New.Path | startswith("./staging/")) | .Old.Path')
(( ${#staging[@]} > 0 )) || { log "no staging replace lines found in $upstream_mod"; exit 1; }
edits=()
for m in "${staging[@]}"; do edits+=("-replace=$m=$m@$staging_version"); done
while read -r godebug; do [[ -n $godebug ]] && edits+=("-godebug=$godebug"); done \
  < <(go mod edit -json "$upstream_mod" | jq -r '(.Godebug // [])[] | "\(.Key)=\(.Value)"')
go mod edit "${edits[@]}"
log "wrapper module: ${#staging[@]} staging modules -> $staging_version; godebug copied"

# Echo one progress line per 100 packages compiled: the cold build is minutes long and otherwise silent.
progress() { awk -v what="$1" '{ n++; if (n % 100 == 0) { printf "[controlplane] %s: %d packages compiled\n", what, n; fflush() } } END { printf "[controlplane] %s: %d packages compiled\n", what, n }' >&2; }

pkg=k8s.io/component-base/version
cli=k8s.io/client-go/pkg/version
ldflags="-s -w"
for p in $pkg $cli; do
  ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor -X $p.gitTreeState=clean"
done

log "go mod download (module graph)"
go mod download k8s.io/kubernetes go.etcd.io/etcd/server/v3

log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy $k8s_version"
go build -v -trimpath -tags=selinux,notest -ldflags "$ldflags" -o "$bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kube-proxy 2>&1 | progress kubernetes

log "building etcd $etcd_version"
go build -v -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3 2>&1 | progress etcd

# kwok and helm have no replace directives, so a plain `go install pkg@version` works.
log "building kwok $KWOK_VERSION"
GOFLAGS=-buildvcs=false GOBIN="$bin" go install -v -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" 2>&1 | progress kwok
log "building helm $HELM_VERSION"
GOFLAGS=-buildvcs=false GOBIN="$bin" go install -v -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" 2>&1 | progress helm

all_present || { log "a binary is missing from $bin"; exit 1; }
"$bin/kube-apiserver" --version >&2
"$bin/etcd" --version | sed -n 1p >&2
echo "$stamp_want" >"$bin/.stamp"
log "done"
echo "$bin"
