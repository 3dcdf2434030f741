//! `switchboard-operator`: the `RealtimeCluster` API, and (with later issues) the controller that turns
//! it into a Redis backplane, ingress affinity and injected sidecars.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api;
