//! The pub/sub vocabulary the session and the relay share, and nothing else: what a
//! subscription is to ([`topic`]), one local connection's subscription set
//! ([`subscriptions`]) and its write queue ([`outbox`]).
//!
//! A leaf: it imports neither `session` nor `relay`, so the relay can hold a connection's outbox
//! and the session can call the relay without the two modules importing each other.

mod outbox;
mod subscriptions;
mod topic;

pub(crate) use self::outbox::Outbox;
pub(crate) use self::subscriptions::Subscriptions;
pub(crate) use self::topic::{Kind, Topic};
