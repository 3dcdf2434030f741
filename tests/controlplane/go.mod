// Wrapper module that pins the control-plane binaries the tests run.
// build.sh copies this file to the cache, adds the staging replace lines and
// godebug setting generated from k8s.io/kubernetes' own go.mod, and builds there,
// so nothing generated lands in the repo. Bump versions here only.
module switchboard.dev/tests/controlplane

go 1.26.0

require (
	go.etcd.io/etcd/server/v3 v3.6.8
	k8s.io/kubernetes v1.36.3
)
