//! `switchboard-operator`: the `RealtimeCluster` API, and the controller that turns it into a Redis
//! backplane, ingress affinity and injected sidecars (so far its pure `validate` and `build` stages).

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api;
pub mod controller;
