//! "The app stopped listening": a pod whose Redis adapter no longer holds its subscription keeps
//! serving sockets but never hears a broadcast again (python-socketio#1581: the manager's
//! listener task dies and nothing notices). Every framework's adapter holds a known subscription
//! for as long as it listens (`socketio`, `flask-socketio`, `socket.io#…`); the operator renders
//! the expected name prefixes from the framework preset into `--expect-subscription`.
//!
//! The check is armed only once the app has been seen holding one of them since the sidecar
//! started: a pure emitter (python-socketio `write_only`, a worker that only publishes) never
//! subscribes, so it never arms and never trips. Once armed, when the app's connections have held
//! none of the expected subscriptions for longer than the grace period, the pod is *not
//! listening*: `/readyz` answers 503 naming the reason (a pod that cannot hear broadcasts should
//! not get new clients), `switchboard_sidecar_app_not_listening` is 1 and
//! `switchboard_sidecar_app_listener_lost_total` counts the episode. Holding one again clears it.
//!
//! This module owns only that judgement. It reads the relay's local subscriptions through two
//! accessors ([`Relay::local_topics`], what is held now, and [`Relay::take_recent_topics`], what
//! was subscribed since the last look, so a subscription shorter than one poll is not missed)
//! and touches nothing else of the relay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::pubsub::Topic;
use crate::relay::Relay;

/// How often the relay's local subscriptions are looked at.
const POLL: Duration = Duration::from_secs(1);

/// What the app is expected to hold, from `--expect-subscription` and
/// `--listening-grace-seconds`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    /// Name prefixes of channels, patterns or shard channels; empty: no check.
    pub prefixes: Vec<String>,
    pub grace: Duration,
}

impl Expectation {
    /// Whether `topics` (the app's subscriptions, by their own names) include an expected one.
    pub fn met_by<'a>(&self, mut topics: impl Iterator<Item = &'a Topic>) -> bool {
        topics.any(|t| {
            self.prefixes
                .iter()
                .any(|p| t.name.starts_with(p.as_bytes()))
        })
    }
}

/// Where the check stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The expected subscription has not been seen since the sidecar started (an app still
    /// starting, or a pure emitter): not judged.
    Unarmed,
    Listening,
    /// Seen before, missing since `since`: within the grace period.
    Missing {
        since: Instant,
    },
    /// Missing for longer than the grace period, since `since`.
    NotListening {
        since: Instant,
    },
}

impl State {
    /// The next state, given whether the app holds an expected subscription `now`.
    pub fn next(self, holds: bool, now: Instant, grace: Duration) -> State {
        match (self, holds) {
            (_, true) => State::Listening,
            (State::Unarmed, false) => State::Unarmed,
            (State::Listening, false) => State::Missing { since: now },
            (State::Missing { since }, false) if now.duration_since(since) > grace => {
                State::NotListening { since }
            }
            (missing @ State::Missing { .. }, false) => missing,
            (lost @ State::NotListening { .. }, false) => lost,
        }
    }
}

/// The check, shared by its polling task and `/readyz`.
pub struct Check {
    expectation: Expectation,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

impl Check {
    pub fn new(expectation: Expectation, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Check {
            expectation,
            state: Mutex::new(State::Unarmed),
            metrics,
        })
    }

    pub fn enabled(&self) -> bool {
        !self.expectation.prefixes.is_empty()
    }

    /// Why the pod is not listening, for `/readyz`; `None` while it is (or is not judged).
    pub fn not_listening(&self) -> Option<String> {
        match *self.state.lock().expect("listening lock poisoned") {
            State::NotListening { since } => Some(format!(
                "not ready: the app stopped listening: its Redis connections have held no subscription to {} for {}s (more than --listening-grace-seconds={}), so this pod no longer hears broadcasts; restart the app (kubectl delete pod <this pod>)",
                self.expectation.prefixes.join(" or "),
                since.elapsed().as_secs(),
                self.expectation.grace.as_secs(),
            )),
            _ => None,
        }
    }

    /// One look at `topics` at `now`; counts and logs a transition.
    pub fn observe<'a>(&self, topics: impl Iterator<Item = &'a Topic>, now: Instant) {
        let holds = self.expectation.met_by(topics);
        let mut state = self.state.lock().expect("listening lock poisoned");
        let before = *state;
        *state = before.next(holds, now, self.expectation.grace);
        match (before, *state) {
            (State::NotListening { .. }, State::NotListening { .. }) => {}
            (_, State::NotListening { .. }) => {
                self.metrics.app_listener_lost.inc();
                self.metrics.app_not_listening.set(1);
                tracing::warn!(expected = %self.expectation.prefixes.join(" "), grace_s = self.expectation.grace.as_secs(), "the app stopped listening: no local connection holds an expected subscription; /readyz now answers 503");
            }
            (State::NotListening { .. }, State::Listening) => {
                self.metrics.app_not_listening.set(0);
                tracing::info!("the app is listening again");
            }
            (State::Unarmed, State::Listening) => {
                tracing::info!(expected = %self.expectation.prefixes.join(" "), "the app holds its expected subscription; the listening check is armed");
            }
            _ => {}
        }
    }

    /// Polls the relay's local subscriptions until the process ends.
    pub async fn run(self: Arc<Self>, relay: Arc<Relay>) {
        if !self.enabled() {
            return;
        }
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // What was subscribed since the last look counts as held at this one: a listener
            // that subscribed and died within one poll still arms the check.
            let recent = relay.take_recent_topics();
            let topics = relay.local_topics();
            self.observe(recent.iter().chain(topics.iter()), Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::pubsub::Kind;

    fn expect(prefixes: &[&str]) -> Expectation {
        Expectation {
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            grace: Duration::from_secs(30),
        }
    }

    fn topic(kind: Kind, name: &'static str) -> Topic {
        Topic::new(kind, Bytes::from_static(name.as_bytes()))
    }

    #[test]
    fn any_kind_of_subscription_with_an_expected_prefix_counts() {
        let node = expect(&["socket.io"]);
        assert!(node.met_by([topic(Kind::Pattern, "socket.io#/#*")].iter()));
        assert!(node.met_by([topic(Kind::Shard, "socket.io#/#")].iter()));
        assert!(!node.met_by([topic(Kind::Channel, "chat")].iter()));
        assert!(!node.met_by(std::iter::empty()));
        let python = expect(&["socketio"]);
        assert!(python.met_by([topic(Kind::Channel, "socketio")].iter()));
    }

    // Time is passed in, so these need no clock: `t0 + n` stands for n seconds later.

    #[test]
    fn a_pure_emitter_never_arms() {
        let grace = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut state = State::Unarmed;
        for i in 0..100 {
            state = state.next(false, t0 + Duration::from_secs(10 * i), grace);
        }
        assert_eq!(state, State::Unarmed);
    }

    #[test]
    fn losing_the_subscription_trips_after_the_grace_and_clears_when_regained() {
        let metrics = Arc::new(Metrics::default());
        let check = Check::new(expect(&["socketio"]), metrics.clone());
        let held = [topic(Kind::Channel, "socketio")];
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        check.observe(held.iter(), at(0));
        assert_eq!(check.not_listening(), None);

        check.observe(std::iter::empty(), at(1));
        check.observe(std::iter::empty(), at(31));
        assert_eq!(check.not_listening(), None, "still within the grace period");

        check.observe(std::iter::empty(), at(32));
        let reason = check
            .not_listening()
            .expect("not listening after the grace");
        assert!(
            reason.contains("stopped listening") && reason.contains("socketio"),
            "{reason}"
        );
        check.observe(std::iter::empty(), at(33));
        assert_eq!(
            metrics.app_listener_lost.get(),
            1,
            "one episode, counted once"
        );
        assert_eq!(metrics.app_not_listening.get(), 1);

        check.observe(held.iter(), at(34));
        assert_eq!(check.not_listening(), None);
        assert_eq!(metrics.app_not_listening.get(), 0);
    }

    #[test]
    fn a_resubscribe_within_the_grace_is_not_reported() {
        let metrics = Arc::new(Metrics::default());
        let check = Check::new(expect(&["socketio"]), metrics.clone());
        let held = [topic(Kind::Channel, "socketio")];
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        check.observe(held.iter(), at(0));
        check.observe(std::iter::empty(), at(1));
        check.observe(held.iter(), at(6));
        check.observe(held.iter(), at(66));
        assert_eq!(check.not_listening(), None);
        assert_eq!(metrics.app_listener_lost.get(), 0);
    }
}
