#!/usr/bin/env bash
# Builds, with no registry and no container engine, every image the node journey runs, as
# docker-archive tarballs (tests/images/pack.py), and optionally imports them into a containerd.
#
#   bash tests/images/build.sh                       # build what changed; last line: the env file
#   bash tests/images/build.sh --import /run/x.sock  # ... and `ctr -n k8s.io images import` each
#   bash tests/images/build.sh --only redis          # some of them (repeatable)
#
# Images (ref: environment variable, default):
#   operator     SWITCHBOARD_OPERATOR_IMAGE     switchboard.local/switchboard-operator:dev
#   sidecar      SWITCHBOARD_SIDECAR_IMAGE      switchboard.local/switchboard-sidecar:dev
#   redis        SWITCHBOARD_REDIS_IMAGE        switchboard.local/redis:dev
#   chat-python  SWITCHBOARD_CHAT_PYTHON_IMAGE  switchboard.local/chat-python:dev
#   chat-node    SWITCHBOARD_CHAT_NODE_IMAGE    switchboard.local/chat-node:dev
#
# What goes in them, and why:
# - operator, sidecar: the host's release build (gnu target, dynamically linked) on the glibc
#   files those two binaries load (found with ldd on the host, which linked them), CA
#   certificates and a passwd naming uid 65532. User, entrypoint and ports as in the Dockerfile.
# - redis: Debian's redis-server, redis-sentinel and redis-cli with dash, coreutils and getent,
#   which the operator's `sh -c` start scripts use; user redis is uid/gid 999 like the official
#   image, whose uid the operator's pod spec runs as; /data is owned by it.
# - chat-python: Debian's python3 (+ python-is-python3: the example runs `python`) with the
#   example's requirements.txt installed from wheels; user 10001 as in the example.
# - chat-node: Debian's nodejs with the example's package-lock.json installed (`npm ci`) into
#   /node_modules, which Node finds from /app/app.js; user node, uid 1000 as in the example.
#   The apps' code stays in the examples' ConfigMaps.
# Debian root filesystems come from the machine's apt sources through mmdebstrap (variant
# essential: no apt or docs in an image), one per image, cached by what goes in them; the .debs
# are cached too. Pods have no internet, so everything is baked in at build time.
#
# Cache: ${SWITCHBOARD_CACHE:-~/.cache/switchboard}/images/ (rootfs/, debs/, wheels/, node/, *.tar,
# and cargo-target/, the release build's target directory unless CARGO_TARGET_DIR is set).
# Each step is keyed by a hash of its inputs and redone only when they change; delete the cache
# directory to pick up new Debian package versions. Needs root (mmdebstrap --mode=root),
# mmdebstrap, cargo, python3 with pip, npm. Settings (environment):
#   SWITCHBOARD_DEBIAN_SUITE    Debian suite               (bookworm: the host's glibc)
#   SWITCHBOARD_DEBIAN_SOURCES  apt sources for mmdebstrap (/etc/apt/sources.list.d/debian.sources)
#   SWITCHBOARD_RELEASE_DIR     prebuilt switchboard-{operator,sidecar} to use instead of cargo
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$repo/tests/images"
cache="${SWITCHBOARD_CACHE:-$HOME/.cache/switchboard}/images"
suite="${SWITCHBOARD_DEBIAN_SUITE:-bookworm}"
sources="${SWITCHBOARD_DEBIAN_SOURCES:-/etc/apt/sources.list.d/debian.sources}"
declare -A refs=(
  [operator]="${SWITCHBOARD_OPERATOR_IMAGE:-switchboard.local/switchboard-operator:dev}"
  [sidecar]="${SWITCHBOARD_SIDECAR_IMAGE:-switchboard.local/switchboard-sidecar:dev}"
  [redis]="${SWITCHBOARD_REDIS_IMAGE:-switchboard.local/redis:dev}"
  [chat-python]="${SWITCHBOARD_CHAT_PYTHON_IMAGE:-switchboard.local/chat-python:dev}"
  [chat-node]="${SWITCHBOARD_CHAT_NODE_IMAGE:-switchboard.local/chat-node:dev}"
)
all=(operator sidecar redis chat-python chat-node)

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() {
  echo "build.sh: $*" >&2
  exit 64
}

containerd=""
only=()
while (($#)); do
  case $1 in
    --import)
      [ $# -ge 2 ] || die "--import needs containerd's socket address"
      containerd=$2
      shift 2
      ;;
    --only)
      if [ $# -lt 2 ] || [ -z "${refs[$2]+set}" ]; then
        die "--only needs one of: ${all[*]}"
      fi
      only+=("$2")
      shift 2
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown argument: $1 (try --help)" ;;
  esac
done
((${#only[@]})) || only=("${all[@]}")
[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap --mode=root, numeric owners in the root filesystems)"
if [ -n "$containerd" ]; then
  [ -S "$containerd" ] || die "--import $containerd: no containerd socket there"
  ctr="${SWITCHBOARD_CTR:-$(command -v ctr || true)}"
  [ -x "$ctr" ] || die "--import needs ctr (on PATH, or SWITCHBOARD_CTR)"
fi
if [ ! -r "$sources" ]; then
  # No apt sources file (not Debian?): Debian's own mirror, in one-line form.
  sources="deb http://deb.debian.org/debian $suite main"
fi

# Reproducible builds: mmdebstrap clamps timestamps to it, and Python compiles .pyc files that
# check their source by hash (not by mtime, which pack.py sets to this same value).
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-1700000000}"
mkdir -p "$cache"/{rootfs,debs,wheels,node,stage}
started=$SECONDS
log() { printf '==> [%4ds] %s\n' "$((SECONDS - started))" "$*" >&2; }

# hash_of <strings...>: a short key for a build step's inputs.
hash_of() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }
# hash_files <paths...>: a key for files' names, modes and contents (small inputs only).
hash_files() {
  local path
  for path in "$@"; do
    find "$path" -printf '%P %m %l\n' | LC_ALL=C sort
    find "$path" -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum | sed "s#  $path#  #"
  done | sha256sum | cut -c1-16
}

# ---- Debian root filesystems ----------------------------------------------------------------

# Removed from every root filesystem once installed: usrmerge (which mmdebstrap installs to
# merge /usr on bookworm) and the Perl it pulls in, about 50 MB no image runs.
purge="usrmerge perl perl-modules-5.36 libperl5.36 libfile-find-rule-perl libnumber-compare-perl libtext-glob-perl"

# rootfs <name> <users> <packages...>: prints the path of a cached root filesystem with those
# packages. <users>: space-separated name:uid:gid:home, created before the packages are
# installed, so a package's own `adduser --system` (redis-server's) keeps our uid.
rootfs() {
  local name=$1 users=$2
  shift 2
  local key
  key="$(hash_of rootfs-v4 "$SOURCE_DATE_EPOCH" "$suite" "$(cat "$sources" 2>/dev/null || echo "$sources")" "$users" "$purge" "$@")"
  local dir="$cache/rootfs/$name-$key"
  if [ -e "$dir/.complete" ]; then
    echo "$dir"
    return
  fi
  log "rootfs $name: mmdebstrap $suite + $* (cold)"
  # One .deb cache per image: the root filesystems are built in parallel.
  local debs="$cache/debs/$name"
  mkdir -p "$debs"
  rm -rf "$dir" "$dir.partial"
  local user_hook="" u uname uid gid home
  for u in $users; do
    IFS=: read -r uname uid gid home <<<"$u"
    user_hook+="echo '$uname:x:$gid:' >>\"\$1/etc/group\"; "
    user_hook+="echo '$uname:x:$uid:$gid::$home:/usr/sbin/nologin' >>\"\$1/etc/passwd\"; "
  done
  local packages
  packages="$(
    IFS=,
    echo "$*"
  )"
  # --variant=essential: Essential:yes packages (dash, coreutils, libc-bin with getent...) and
  # ours, installed by apt from outside, so no apt lands in the image. Docs, man pages and
  # locales are never unpacked (copyright files are kept). The .debs go through a cache dir.
  # shellcheck disable=SC2016 # "$1" in the hooks is mmdebstrap's, the root directory
  mmdebstrap --mode=root --variant=essential --format=directory ${SWITCHBOARD_MMDEBSTRAP_VERBOSE:+--verbose} \
    --include="$packages" \
    --aptopt='APT::Install-Recommends "false"' --dpkgopt=force-unsafe-io \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --skip=essential/unlink \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
    --setup-hook="sync-in '$debs' /var/cache/apt/archives/" \
    --essential-hook="$user_hook" \
    --customize-hook="sync-out /var/cache/apt/archives '$debs'" \
    --customize-hook="chroot \"\$1\" dpkg --purge --force-depends $purge >/dev/null 2>&1" \
    --customize-hook='rm -rf "$1"/var/log/* "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old' \
    "$suite" "$dir.partial" "$sources" >&2 || {
    # Checked here, not by errexit: the parallel prebuild below runs this where errexit is off.
    rm -rf "$dir.partial"
    echo "build.sh: mmdebstrap failed for $name" >&2
    return 1
  }
  rm -f "$debs/lock"
  touch "$dir.partial/.complete"
  mv "$dir.partial" "$dir"
  echo "$dir"
}

# ---- inputs built on the host ---------------------------------------------------------------

release_dir() {
  if [ -n "${SWITCHBOARD_RELEASE_DIR:-}" ]; then
    echo "$SWITCHBOARD_RELEASE_DIR"
    return
  fi
  # Its own target directory in the cache: a clean clone (CI) then rebuilds only what changed
  # instead of every dependency; without the cache it is a plain full build.
  local target="${CARGO_TARGET_DIR:-$cache/cargo-target}"
  log "cargo build --release (operator, sidecar) into $target"
  # Without SOURCE_DATE_EPOCH: some build scripts watch it, and cargo would rebuild everything
  # that a plain `cargo build --release` built.
  (cd "$repo" && env -u SOURCE_DATE_EPOCH CARGO_TARGET_DIR="$target" cargo build --release --locked --quiet \
    -p switchboard-operator --bin switchboard-operator \
    -p switchboard-sidecar --bin switchboard-sidecar) >&2
  echo "$target/release"
}

# glibc_runtime <dir> <binaries...>: the shared objects the binaries load (as the host's loader
# resolves them: these binaries were linked here), a passwd with nonroot (65532) and CA
# certificates: what distroless/cc holds, for a dynamically linked Rust binary.
glibc_runtime() {
  local dir=$1 lib
  shift
  rm -rf "$dir"
  mkdir -p "$dir/etc/ssl/certs" "$dir/tmp"
  chmod 1777 "$dir/tmp"
  for lib in $(ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u); do
    # The file under the name the binary asks for (ldd prints the symlink's path).
    install -D -m 0755 "$(readlink -f "$lib")" "$dir$lib"
  done
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$dir/etc/group"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/"
}

# target_python <rootfs> <pythonpath> <args...>: the root filesystem's own python3, run on this
# host (both Debian bookworm, one glibc) with its standard library from the root filesystem.
target_python() {
  local root=$1 path=$2
  shift 2
  PYTHONHOME="$root/usr" PYTHONPATH="$path" PYTHONNOUSERSITE=1 "$root/usr/bin/python3" "$@"
}

# python_packages <rootfs>: prints a cached dir with the chat-python example's requirements
# installed for the rootfs' Python under usr/local/lib/python3.X/dist-packages.
python_packages() {
  local root=$1 requirements="$repo/manifests/examples/python-socketio-chat/requirements.txt"
  local version full key
  version="$(target_python "$root" "" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" ||
    die "cannot run the python3 of $root"
  full="$(target_python "$root" "" -c 'import platform; print(platform.python_version())')"
  key="$(hash_of wheels-v3 "$SOURCE_DATE_EPOCH" "$full" "$(cat "$requirements")")"
  local dir="$cache/wheels/$key" site
  site="$dir/usr/local/lib/python$version/dist-packages"
  if [ ! -e "$dir/.complete" ]; then
    log "chat-python: pip install -r requirements.txt for Python $full (cold)"
    rm -rf "$dir" "$cache/stage/pip"
    # The host's pip, run by the image's own interpreter: dependency markers are evaluated for
    # the Python that will import them. (The host's Python with --python-version evaluates them
    # for itself: redis needs async-timeout below Python 3.11.3, Debian's is 3.11.2, and an
    # image built that way fails at `import redis` in the pod.)
    mkdir -p "$cache/stage/pip"
    cp -r "$(python3 -c 'import os, pip; print(os.path.dirname(pip.__file__))')" "$cache/stage/pip/"
    target_python "$root" "$cache/stage/pip" -m pip install --quiet --disable-pip-version-check \
      --no-warn-script-location --only-binary=:all: --target "$site" -r "$requirements" >&2
    rm -rf "${site:?}/bin" "$cache/stage/pip"
    # What app.py imports, imported by the image's interpreter before anything is packed.
    target_python "$root" "$site" -c 'import aiohttp, engineio, redis.asyncio, socketio' ||
      die "chat-python: the packages do not import with the image's Python $full"
    touch "$dir/.complete"
  fi
  echo "$dir"
}

# node_packages: prints a cached dir holding /node_modules from the chat-node example's lock.
node_packages() {
  local example="$repo/manifests/examples/node-socketio-chat" key
  key="$(hash_of node-v1 "$(cat "$example/package.json" "$example/package-lock.json")")"
  local dir="$cache/node/$key"
  if [ ! -e "$dir/.complete" ]; then
    log "chat-node: npm ci from package-lock.json (cold)"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$example/package.json" "$example/package-lock.json" "$dir/"
    # Pure JavaScript packages: installed by the host's npm, run by Debian's node.
    (cd "$dir" && npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error) >&2
    rm -f "$dir/package.json" "$dir/package-lock.json" "$dir/node_modules/.package-lock.json"
    touch "$dir/.complete"
  fi
  echo "$dir"
}

# ---- images ---------------------------------------------------------------------------------

declare -A ids=()
# image <name> <fingerprint> <pack.py args...>: packs unless an archive with that fingerprint
# (inputs + pack.py + args) exists; records the image id.
image() {
  local name=$1 fingerprint=$2
  shift 2
  local key out="$cache/$name.tar"
  key="$(hash_of image-v1 "$fingerprint" "$(sha256sum "$here/pack.py")" "${refs[$name]}" "$@")"
  if [ -s "$out" ] && [ "$(cat "$cache/$name.key" 2>/dev/null)" = "$key" ]; then
    ids[$name]="$(cat "$cache/$name.id")"
    log "$name: unchanged (${ids[$name]:7:12})"
    return
  fi
  log "$name: pack ${refs[$name]}"
  ids[$name]="$(python3 "$here/pack.py" --ref "${refs[$name]}" -o "$out" "$@")"
  echo "${ids[$name]}" >"$cache/$name.id"
  echo "$key" >"$cache/$name.key"
  log "$name: ${ids[$name]:7:12}, $(du -h "$out" | cut -f1)"
}

wants() { [[ " ${only[*]} " == *" $1 "* ]]; }

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n 1)"
labels=(--label "org.opencontainers.image.source=https://github.com/switchboard-dev/switchboard"
  --label "org.opencontainers.image.licenses=Apache-2.0" --label "org.opencontainers.image.version=${version:-dev}")

# The Debian root filesystems (and the users and packages in them), by image.
redis_rootfs() { rootfs redis "redis:999:999:/data" redis-server redis-sentinel redis-tools; }
python_rootfs() { rootfs chat-python "app:10001:10001:/app" python3 python-is-python3; }
node_rootfs() { rootfs chat-node "node:1000:1000:/home/node" nodejs; }
# Cold, each takes a minute or two, mostly dpkg unpacking the essential set: build them side by
# side (and beside cargo), then use them below, cached by then; a failure shows again there.
rootfs_jobs=()
for name in redis chat-python chat-node; do
  wants "$name" || continue
  # Only the background build: its failure shows again below, where the rootfs is used.
  { "${name/chat-/}_rootfs" >/dev/null || true; } &
  rootfs_jobs+=($!)
done

if wants operator || wants sidecar; then
  release="$(release_dir)"
  for bin in switchboard-operator switchboard-sidecar; do
    [ -x "$release/$bin" ] || die "no $release/$bin (cargo build --release failed?)"
  done
  runtime="$cache/stage/glibc-runtime"
  glibc_runtime "$runtime" "$release/switchboard-operator" "$release/switchboard-sidecar"
  for name in operator sidecar; do
    wants "$name" || continue
    bin="switchboard-$name"
    stage="$cache/stage/$name"
    rm -rf "$stage"
    install -D -m 0755 "$release/$bin" "$stage/usr/local/bin/$bin"
    case $name in
      operator) ports=(--expose 8080 --expose 9443) title="Kubernetes operator for Switchboard" ;;
      sidecar) ports=(--expose 6379 --expose 9091) title="Per-pod Redis-protocol sidecar for Switchboard" ;;
    esac
    image "$name" "$(hash_files "$runtime" "$stage")" \
      --layer-dir "$runtime" --layer-dir "$stage" --chmod /tmp=1777 \
      --entrypoint "[\"/usr/local/bin/$bin\"]" --user 65532:65532 "${ports[@]}" \
      "${labels[@]}" --label "org.opencontainers.image.title=$bin" \
      --label "org.opencontainers.image.description=$title"
  done
fi


((${#rootfs_jobs[@]} == 0)) || wait "${rootfs_jobs[@]}"

if wants redis; then
  root="$(redis_rootfs)"
  mkdir -p "$root/data"
  # No Entrypoint: the operator's pods give `command` (redis-server, or `sh -c` with Sentinel).
  image redis "$root" --layer-dir "$root" --keep-owner --chown /data=999:999 --chmod /data=0770 \
    --cmd '["redis-server"]' --user 999:999 --workdir /data --expose 6379 --expose 26379 \
    "${labels[@]}" --label "org.opencontainers.image.title=redis (Debian $suite)"
fi

if wants chat-python; then
  root="$(python_rootfs)"
  packages="$(python_packages "$root")"
  image chat-python "$root $packages" --layer-dir "$root" --keep-owner --layer-dir "$packages" \
    --cmd '["python"]' --user 10001:10001 --workdir /app --expose 5000 \
    --env PYTHONUNBUFFERED=1 --env PYTHONDONTWRITEBYTECODE=1 \
    "${labels[@]}" --label "org.opencontainers.image.title=python-socketio chat example runtime"
fi

if wants chat-node; then
  root="$(node_rootfs)"
  packages="$(node_packages)"
  image chat-node "$root $packages" --layer-dir "$root" --keep-owner --layer-dir "$packages" \
    --cmd '["node"]' --user 1000:1000 --workdir /app --expose 3000 --env NODE_ENV=production \
    "${labels[@]}" --label "org.opencontainers.image.title=Node socket.io chat example runtime"
fi

if [ -n "$containerd" ]; then
  for name in "${only[@]}"; do
    log "$name: ctr -n k8s.io images import (${refs[$name]})"
    "$ctr" --address "$containerd" -n k8s.io images import "$cache/$name.tar" >&2
  done
fi

env_file="$cache/images.env"
{
  echo "# Written by tests/images/build.sh: image refs and ids (source it)."
  for name in "${all[@]}"; do
    var="SWITCHBOARD_$(tr 'a-z-' 'A-Z_' <<<"$name")_IMAGE"
    echo "$var=${refs[$name]}"
    [ -n "${ids[$name]:-}" ] && echo "${var}_ID=${ids[$name]}"
    echo "${var}_ARCHIVE=$cache/$name.tar"
  done
} >"$env_file"
log "done"
echo "$env_file"
