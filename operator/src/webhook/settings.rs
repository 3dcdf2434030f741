//! What the injector knows that a RealtimeCluster's spec does not say: read once from the
//! operator's flags, shared by [`mutate`](super::mutate) and [`sidecar`](super::sidecar).

/// The operator's injection settings.
#[derive(Clone, Debug)]
pub struct InjectSettings {
    /// The sidecar image when `spec.sidecar.image` is unset.
    pub sidecar_image: String,
    /// Kubernetes >= 1.29: inject a native sidecar (an init container with `restartPolicy: Always`).
    pub native_sidecars: bool,
    /// The operator's own namespace: never injected.
    pub operator_namespace: String,
}
