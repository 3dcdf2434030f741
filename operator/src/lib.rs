//! `switchboard-operator`: the `RealtimeCluster` API, and the controller that turns it into a Redis
//! backplane, ingress affinity and injected sidecars; its leader election, metrics and health endpoints.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api;
pub mod config;
pub mod controller;
mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod webhook;

pub use error::{Error, Result};
