//! The controller's one error type. Each variant says what failed in words a user can act on;
//! [`Error::metric_label`] maps it to a short fixed label for the error counter.

use crate::controller::validate::ValidateError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be built; nothing changes until the user edits it.
    #[error("invalid RealtimeCluster: {0}")]
    InvalidSpec(#[from] ValidateError),

    /// A call to the API server failed; retried with backoff.
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },

    /// Issuing the managed backplane's TLS certificate failed; retried with backoff.
    #[error("issuing the backplane's TLS certificate: {0}")]
    Certificate(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Kube {
                source: kube::Error::Api(status),
                ..
            } => match status.code {
                403 => "forbidden",
                404 => "not_found",
                409 => "conflict",
                422 => "rejected",
                _ => "api",
            },
            Error::Kube { .. } => "api_unreachable",
            Error::Certificate(_) => "certificate",
        }
    }

    /// True when retrying cannot help until the RealtimeCluster changes.
    pub fn awaits_change(&self) -> bool {
        matches!(self, Error::InvalidSpec(_))
    }
}
