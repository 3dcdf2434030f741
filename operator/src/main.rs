//! `switchboard-operator`: the controller, the sidecar-injection webhook and `crdgen`.
//! Only the version banner exists so far; the controller arrives with its own issue.

fn main() {
    println!("switchboard-operator {}", env!("CARGO_PKG_VERSION"));
}
