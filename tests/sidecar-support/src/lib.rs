//! Shared by the sidecar's integration tests and benches (a dev-dependency of
//! `switchboard-sidecar`): real `redis-server` and sidecar processes (a lone server, a Sentinel
//! group, a Redis Cluster), a raw RESP client, and the oracle harness that compares the sidecar's
//! replies with Redis's.
//!
//! The sidecar binary under test is found next to the test or bench executable that runs (cargo
//! builds it there for every integration test and bench of its package); see
//! [`process::sidecar_binary`].

pub mod client;
pub mod cluster;
pub mod oracle;
pub mod process;
pub mod resp;
pub mod sentinel;
pub mod tls;

pub use client::{REPLY_DEADLINE, RawClient, ReadError};
pub use cluster::RedisCluster;
pub use oracle::{Conn, Endpoint, Oracle, Side, Transcript, norm, self_check};
pub use process::{
    RedisServer, Sidecar, SidecarOptions, TempDir, free_port, http_body, http_get, wait_for,
};
pub use resp::{command, show};
pub use sentinel::SentinelGroup;
