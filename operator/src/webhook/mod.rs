//! Sidecar injection: a mutating admission webhook for Pods.
//!
//! [`mutate`] decides, purely, what happens to one Pod and [`sidecar`] builds what it adds; both
//! read [`settings`] and the names leaf ([`crate::names`]) and never each other's internals
//! (`mutate` uses `sidecar`, not the reverse). The HTTPS server and the certificates around them
//! are thin I/O.

pub mod certs;
pub mod handler;
pub mod mutate;
pub mod run;
pub mod server;
pub mod settings;
pub mod sidecar;

#[cfg(test)]
mod tests;
