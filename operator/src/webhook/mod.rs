//! Sidecar injection: a mutating admission webhook for Pods.
//!
//! [`mutate`] decides, purely, what happens to one Pod; the HTTPS server and the certificates
//! around it are thin I/O.

pub mod certs;
pub mod handler;
pub mod mutate;
pub mod run;
pub mod server;
pub mod sidecar;

#[cfg(test)]
mod tests;
