//! Prints the RealtimeCluster CRD; `scripts/gen-crds.sh` writes it to `crds/`.
use kube::CustomResourceExt;

fn main() {
    print!(
        "{}",
        serde_yaml::to_string(&switchboard_operator::api::RealtimeCluster::crd()).unwrap()
    );
}
