#!/usr/bin/env bash
# Builds (or reuses) the node's own binaries, the ones the control-plane build does not make:
#   containerd, ctr, containerd-shim-runc-v2   (containerd, CGO off, no btrfs/devmapper/zfs)
#   coredns                                     (cluster DNS, static)
#   traefik                                     (the ingress, static; patched, see below)
#   pause                                       (the sandbox entrypoint, tests/node/pause)
#   probe                                       (the test pods' HTTP backend and checks, tests/node/probe)
#   cni/{bridge,host-local,loopback,portmap}    (Debian's containernetworking-plugins, or the Go module)
# into ${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}/node/<stamp>/bin/ (kubelet and kube-proxy come
# from tests/controlplane/build.sh). Each part is stamped on its own, so an interrupted cold build
# resumes where it stopped; a warm run (everything present, stamp matching) takes seconds.
# Prints the bin directory on its last line (use it as SWITCHBOARD_NODE_BIN).
set -euo pipefail

CONTAINERD_VERSION=v2.4.2
COREDNS_VERSION=v1.15.0
TRAEFIK_VERSION=v3.7.13
TRAEFIK_LEGO_VERSION=v5.4.1   # the lego Traefik requires; repaired, see the traefik step
GO_HTTP_AUTH_VERSION=v0.4.0   # stands in for Traefik's fork; see the traefik step
CNI_PLUGINS_VERSION=v1.10.0 # only when Debian's /usr/lib/cni is absent
CNI_PLUGINS=(bridge host-local loopback portmap)
DEBIAN_CNI_DIR=/usr/lib/cni

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
start=$SECONDS
log() { printf '[node %4ds] %s\n' "$((SECONDS - start))" "$*" >&2; }
# Echo one progress line per 100 packages compiled, keep the whole go output in a log, and show its
# end when the build fails (go's errors would otherwise vanish in the count).
progress() { tee "$root/$1.log" | awk -v what="$1" '{ n++; if (n % 100 == 0) { printf "[node] %s: %d packages compiled\n", what, n; fflush() } } END { printf "[node] %s: %d packages compiled\n", what, n }' >&2; }
go_build() { # go_build NAME go-args...: go "$@" with progress; on failure the end of its log
  local name=$1; shift
  if ! go "$@" 2>&1 | progress "$name"; then
    log "building $name failed; the end of $root/$name.log:"
    tail -n 40 "$root/$name.log" >&2
    exit 1
  fi
}

src_sum() { cat "$here/$1/go.mod" "$here/$1/main.go" | sha256sum | cut -c1-16; }
pause_sum=$(src_sum pause)
probe_sum=$(src_sum probe)
traefik_stamp="$TRAEFIK_VERSION lego=$TRAEFIK_LEGO_VERSION auth=$GO_HTTP_AUTH_VERSION patch=$(cat "$here"/traefik-patch/*/* | sha256sum | cut -c1-16)"
if [[ -x $DEBIAN_CNI_DIR/bridge ]]; then cni_source="debian:$DEBIAN_CNI_DIR"; else cni_source="go:$CNI_PLUGINS_VERSION"; fi
stamp_want="containerd=$CONTAINERD_VERSION coredns=$COREDNS_VERSION traefik=$traefik_stamp cni=$cni_source pause=$pause_sum probe=$probe_sum go=$(go env GOVERSION)"
# Named by the upstream versions only, so a change to pause or probe rebuilds just that part.
root="${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}/node/containerd-$CONTAINERD_VERSION-coredns-$COREDNS_VERSION-traefik-$TRAEFIK_VERSION"
bin="$root/bin"
binaries=(containerd ctr containerd-shim-runc-v2 coredns traefik pause probe "${CNI_PLUGINS[@]/#/cni/}")

all_present() { local b; for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || return 1; done; }
if all_present && [[ -f "$bin/.stamp" && "$(<"$bin/.stamp")" == "$stamp_want" ]]; then
  log "cached: $stamp_want"
  echo "$bin"
  exit 0
fi

log "building into $bin ($stamp_want)"
mkdir -p "$bin/cni" "$root/src"
rm -f "$bin/.stamp"
export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"

# part NAME STAMP: true when NAME was already built with STAMP (an earlier, interrupted run).
part_done() { [[ -f "$bin/.part-$1" && "$(<"$bin/.part-$1")" == "$2" ]]; }
part_mark() { echo "$2" >"$bin/.part-$1"; }

for small in pause:"$pause_sum" probe:"$probe_sum"; do
  name=${small%%:*} sum=${small#*:}
  if ! part_done "$name" "$sum"; then
    log "building $name"
    (cd "$here/$name" && go build -trimpath -ldflags "-s -w" -o "$bin/$name" .)
    part_mark "$name" "$sum"
  fi
done

if ! part_done cni "$cni_source"; then
  if [[ $cni_source == debian:* ]]; then
    log "CNI plugins from $DEBIAN_CNI_DIR"
    for p in "${CNI_PLUGINS[@]}"; do install -m 0755 "$DEBIAN_CNI_DIR/$p" "$bin/cni/$p"; done
  else
    log "building CNI plugins $CNI_PLUGINS_VERSION"
    pkgs=()
    for p in "${CNI_PLUGINS[@]}"; do
      case $p in
        host-local) pkgs+=("github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_PLUGINS_VERSION") ;;
        portmap) pkgs+=("github.com/containernetworking/plugins/plugins/meta/portmap@$CNI_PLUGINS_VERSION") ;;
        *) pkgs+=("github.com/containernetworking/plugins/plugins/main/$p@$CNI_PLUGINS_VERSION") ;;
      esac
    done
    GOFLAGS=-buildvcs=false GOBIN="$bin/cni" go_build cni install -v -trimpath -ldflags "-s -w" "${pkgs[@]}"
  fi
  part_mark cni "$cni_source"
fi

if ! part_done containerd "$CONTAINERD_VERSION"; then
  log "building containerd, ctr, containerd-shim-runc-v2 $CONTAINERD_VERSION"
  m=github.com/containerd/containerd/v2
  GOFLAGS=-buildvcs=false GOBIN="$bin" go_build containerd install -v -trimpath -tags no_btrfs,no_devmapper,no_zfs \
    -ldflags "-s -w -X $m/version.Version=$CONTAINERD_VERSION -X $m/version.Package=$m" \
    "$m/cmd/containerd@$CONTAINERD_VERSION" "$m/cmd/ctr@$CONTAINERD_VERSION" \
    "$m/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
  part_mark containerd "$CONTAINERD_VERSION"
fi

if ! part_done coredns "$COREDNS_VERSION"; then
  log "building coredns $COREDNS_VERSION"
  GOFLAGS=-buildvcs=false GOBIN="$bin" go_build coredns install -v -trimpath -ldflags "-s -w" \
    "github.com/coredns/coredns@$COREDNS_VERSION"
  part_mark coredns "$COREDNS_VERSION"
fi

# Traefik's go.mod has replace lines, which `go install pkg@version` refuses, so it is built inside a
# writable copy of the downloaded module, with three repairs (tests/node/traefik-patch/), each
# because the module proxy this machine uses lacks a module (403 "not available"):
#   - ./pkg/config/dynamic/ext, the target of one replace line, is a nested module the module zip
#     leaves out: an equivalent (two empty extension structs) is put there;
#   - github.com/containous/go-http-auth (Traefik's fork, a replace target) is not served: upstream
#     abbot/go-http-auth v0.4.0 plus the fork's two functions Traefik calls;
#   - lego's ACME DNS-01 providers need 14 cloud SDKs that are not served: lego is used with its
#     provider registry replaced by one that knows no provider (a test node gets no certificates).
if ! part_done traefik "$traefik_stamp"; then
  patch=$here/traefik-patch
  log "downloading traefik $TRAEFIK_VERSION and the modules it is repaired with"
  mod_dir() { go mod download -json "$1" | jq -r .Dir; }
  writable_copy() { rm -rf "$2"; cp -r "$1" "$2"; chmod -R u+w "$2"; }
  src="$root/src"
  writable_copy "$(mod_dir "github.com/traefik/traefik/v3@$TRAEFIK_VERSION")" "$src/traefik"
  writable_copy "$(mod_dir "github.com/go-acme/lego/v5@$TRAEFIK_LEGO_VERSION")" "$src/lego"
  writable_copy "$(mod_dir "github.com/abbot/go-http-auth@$GO_HTTP_AUTH_VERSION")" "$src/go-http-auth"
  mkdir -p "$src/traefik/pkg/config/dynamic/ext"
  cp "$patch/dynamic-ext/"* "$src/traefik/pkg/config/dynamic/ext/"
  rm -f "$src/lego/providers/dns/"*.go
  cp "$patch/lego-dns/zz_gen_dns_providers.go" "$src/lego/providers/dns/"
  cp "$patch/go-http-auth/"* "$src/go-http-auth/"
  (cd "$src/traefik" && go mod edit \
    -replace "github.com/go-acme/lego/v5=../lego" \
    -replace "github.com/abbot/go-http-auth=../go-http-auth")
  log "building traefik $TRAEFIK_VERSION"
  (cd "$src/traefik" && go_build traefik build -v -trimpath \
    -ldflags "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" \
    -o "$bin/traefik" ./cmd/traefik)
  part_mark traefik "$traefik_stamp"
fi

all_present || { log "a binary is missing from $bin"; exit 1; }
"$bin/containerd" --version >&2
"$bin/coredns" -version | sed -n 1p >&2
"$bin/traefik" version | sed -n 1,2p >&2
echo "$stamp_want" >"$bin/.stamp"
log "done"
echo "$bin"
