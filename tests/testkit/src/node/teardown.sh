#!/usr/bin/env bash
# Undoes everything one node-mode run changed on this machine; `teardown.sh RUN_DIR`.
#
# Written into the run directory before the run changes anything, and run by the guardian (see
# process.rs) both on an orderly stop and when the test process died, so the two paths are one.
# Best effort and idempotent: every step runs even when an earlier one failed, and running it twice,
# or on a run that stopped half-way through its start, is harmless. What it undoes (NODE.md):
# pods (deleted while the kubelet still runs), processes by recorded PID, leftover containers and
# shims that are ours, mounts under the run directory, veths and the bridge, the guard rule, every
# KUBE-* and CNI-* iptables chain (IPv4 and IPv6), kernel settings, kubepods cgroups, and the few
# files containerd and the kubelet write outside the run directory.
set -u
run=${1:?usage: teardown.sh RUN_DIR}
# shellcheck source=/dev/null
. "$run/node.env"
say() { echo "[teardown $(date +%T.%N | cut -c1-12)] $*"; }

# A process counts as gone once it exited, zombie or not (its parent, the test, may not have reaped it).
running() {
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}
pid_of() { [ -f "$run/pids/$1" ] && cat "$run/pids/$1"; }
# Each component runs in its own process group, led by the recorded PID.
stop() {
  local pid _
  pid=$(pid_of "$1") || return 0
  running "$pid" || return 0
  say "stopping $1 ($pid)"
  kill -TERM -- "-$pid" 2>/dev/null
  for _ in $(seq 100); do running "$pid" || return 0; sleep 0.1; done
  say "$1 ($pid) ignored SIGTERM for 10 s: SIGKILL"
  kill -KILL -- "-$pid" 2>/dev/null
  for _ in $(seq 50); do running "$pid" || return 0; sleep 0.1; done
}
is_up() { local pid; pid=$(pid_of "$1") && running "$pid"; }

# 1. Pods, while the kubelet runs: it stops the containers, calls CNI DEL and unmounts volumes.
#    The controllers go first so nothing recreates what is deleted.
stop kube-controller-manager
stop kube-scheduler
if is_up kubelet && is_up kube-apiserver && [ -f "$KUBECONFIG" ]; then
  say "deleting every pod"
  timeout 90 kubectl --kubeconfig "$KUBECONFIG" delete pods --all --all-namespaces \
    --grace-period=2 --wait=true --timeout=80s
fi
stop kube-proxy
stop kubelet
stop coredns

# 2. Containers the kubelet did not get to, while containerd still answers.
ctr() { timeout 20 "$NODE_BIN/ctr" --address "$CONTAINERD_ADDRESS" -n k8s.io "$@"; }
if is_up containerd; then
  for task in $(ctr tasks ls -q 2>/dev/null); do
    say "killing leftover task $task"
    ctr tasks kill -s SIGKILL "$task" 2>/dev/null
    ctr tasks delete -f "$task" 2>/dev/null
  done
fi
stop containerd
for id in $(runc --root "$RUNC_ROOT/k8s.io" list -q 2>/dev/null); do
  say "deleting leftover runc container $id"
  runc --root "$RUNC_ROOT/k8s.io" delete --force "$id"
done
# Shims outlive containerd by design; only ours (by executable path) are killed.
for proc in /proc/[0-9]*; do
  if [ "$(readlink "$proc/exe" 2>/dev/null)" = "$NODE_BIN/containerd-shim-runc-v2" ]; then
    say "killing leftover shim ${proc#/proc/}"
    kill -KILL "${proc#/proc/}" 2>/dev/null
  fi
done

# 3. Mounts under the run directory (container root filesystems, volumes, network namespaces), deepest first.
findmnt -rn -o TARGET | awk -v run="$run/" 'index($0 "/", run) == 1' | sort -r | while read -r mount; do
  say "unmounting $mount"
  umount "$mount" 2>/dev/null || umount -l "$mount"
done

# 4. The network: veths on the bridge, the bridge, the guard rule, iptables chains.
if ip link show "$BRIDGE" >/dev/null 2>&1; then
  for veth in $(ip -o link show master "$BRIDGE" | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
    say "deleting veth $veth"
    ip link del "$veth"
  done
  say "deleting bridge $BRIDGE"
  ip link del "$BRIDGE"
fi
while iptables -D FORWARD -s "$POD_CIDR" ! -o "$BRIDGE" -m comment --comment "$GUARD_COMMENT" -j DROP 2>/dev/null; do
  say "removed the guard rule"
done
if [ -x "$CONTROLPLANE_BIN/kube-proxy" ]; then
  "$CONTROLPLANE_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || say "kube-proxy --cleanup failed (the sweep below still runs)"
fi
# The kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...) and anything kube-proxy or a
# CNI plugin left: unhook, flush, delete. `-S` prints rules quoted for a shell, hence the eval.
for cmd in iptables ip6tables; do
  for table in filter nat mangle raw; do
    "$cmd" -t "$table" -S 2>/dev/null | grep -E '^-A .* -j (KUBE|CNI)-' | while read -r rule; do
      eval "\"$cmd\" -t \"$table\" -D ${rule#-A }" 2>/dev/null
    done
    chains=$("$cmd" -t "$table" -S 2>/dev/null | awk '/^-N (KUBE|CNI)-/ { print $2 }')
    for chain in $chains; do "$cmd" -t "$table" -F "$chain"; done
    for chain in $chains; do "$cmd" -t "$table" -X "$chain" && say "deleted $cmd $table $chain"; done
  done
done

# kube-proxy's nftables tables, should a version make them even in iptables mode.
if command -v nft >/dev/null; then
  for family in ip ip6; do
    nft delete table "$family" kube-proxy 2>/dev/null && say "deleted nft table $family kube-proxy"
  done
fi

# 5. Kernel settings the kubelet and kube-proxy change, back to what they were before the run.
for setting in $SYSCTLS; do
  key=${setting%%=*} value=${setting#*=}
  file=/proc/sys/${key//.//}
  if [ -f "$file" ] && [ "$(cat "$file")" != "$value" ]; then
    say "restoring $key = $value (was $(cat "$file"))"
    echo "$value" >"$file"
  fi
done

# 6. The kubelet's cgroups (cgroupfs driver: a kubepods tree in every hierarchy), leaves first.
for tree in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
  [ -d "$tree" ] || continue
  say "removing $tree"
  find "$tree" -depth -type d -exec rmdir {} \; 2>/dev/null
  [ -d "$tree" ] && say "could not remove all of $tree"
done

# 7. Files outside the run directory: containerd's shim sockets and fifos, libcni's cache, the
#    kubelet's device-plugin directory and /var/log/containers links. Removed whole only if this run created them.
rm -rf /run/containerd/s /run/containerd/fifo
[ "$HAD_RUN_CONTAINERD" = 0 ] && rmdir /run/containerd 2>/dev/null
if [ "$HAD_VAR_LIB_CNI" = 0 ]; then
  rm -rf /var/lib/cni
else
  rm -rf /var/lib/cni/results/"$CNI_NETWORK"-* /var/lib/cni/networks/"$CNI_NETWORK"
fi
# The kubelet's device-plugin socket directory is fixed at /var/lib/kubelet/device-plugins.
if [ "$HAD_VAR_LIB_KUBELET" = 0 ]; then
  rm -rf /var/lib/kubelet
else
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
fi
if [ "$HAD_VAR_LOG_CONTAINERS" = 0 ]; then
  rm -rf /var/log/containers
else
  find /var/log/containers -maxdepth 1 -type l -lname "$run/*" -delete 2>/dev/null
fi
say "done"
