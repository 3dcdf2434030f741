//! The injected sidecar's settings. The buffer limits mirror the sidecar's own flags
//! (`--publish-buffer-bytes`, `--publish-buffer-messages`, `--client-buffer-bytes`) and their defaults.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Sidecar {
    /// Sidecar image. Default: the one the operator was installed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// Resources of the sidecar container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Bytes of publishes held while the backplane is unreachable; beyond it they are dropped and counted.
    #[serde(default = "default_publish_buffer_bytes")]
    #[schemars(range(min = 0))]
    pub publish_buffer_bytes: i64,

    /// Publishes held while the backplane is unreachable.
    #[serde(default = "default_publish_buffer_messages")]
    #[schemars(range(min = 0))]
    pub publish_buffer_messages: i64,

    /// Bytes queued for one slow local subscriber before messages to it are dropped and counted.
    #[serde(default = "default_client_buffer_bytes")]
    #[schemars(range(min = 1024))]
    pub client_buffer_bytes: i64,
}

impl Default for Sidecar {
    fn default() -> Self {
        Self {
            image: None,
            resources: None,
            publish_buffer_bytes: default_publish_buffer_bytes(),
            publish_buffer_messages: default_publish_buffer_messages(),
            client_buffer_bytes: default_client_buffer_bytes(),
        }
    }
}

fn default_publish_buffer_bytes() -> i64 {
    8 << 20
}

fn default_publish_buffer_messages() -> i64 {
    10_000
}

fn default_client_buffer_bytes() -> i64 {
    32 << 20
}
