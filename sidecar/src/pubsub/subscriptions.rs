//! What one local connection is subscribed to, as Redis counts it for confirmations. The
//! session owns the set; the relay changes it while it changes the shared table, so both agree.

use std::collections::HashSet;

use bytes::Bytes;

use super::topic::Kind;

#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    shards: HashSet<Bytes>,
}

impl Subscriptions {
    fn set(&self, kind: Kind) -> &HashSet<Bytes> {
        match kind {
            Kind::Channel => &self.channels,
            Kind::Pattern => &self.patterns,
            Kind::Shard => &self.shards,
        }
    }

    fn set_mut(&mut self, kind: Kind) -> &mut HashSet<Bytes> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
            Kind::Shard => &mut self.shards,
        }
    }

    pub(crate) fn contains(&self, kind: Kind, name: &[u8]) -> bool {
        self.set(kind).contains(name)
    }

    /// True if `name` was not subscribed yet.
    pub(crate) fn insert(&mut self, kind: Kind, name: Bytes) -> bool {
        self.set_mut(kind).insert(name)
    }

    /// True if `name` was subscribed.
    pub(crate) fn remove(&mut self, kind: Kind, name: &[u8]) -> bool {
        self.set_mut(kind).remove(name)
    }

    pub(crate) fn clear(&mut self, kind: Kind) {
        self.set_mut(kind).clear();
    }

    /// The count a confirmation carries: channels and patterns together, shard channels apart.
    pub(crate) fn count(&self, kind: Kind) -> i64 {
        match kind {
            Kind::Shard => self.shards.len() as i64,
            _ => (self.channels.len() + self.patterns.len()) as i64,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.patterns.is_empty() && self.shards.is_empty()
    }

    /// The names of one kind, sorted (so "unsubscribe from all" confirms in a stable order).
    pub(crate) fn sorted(&self, kind: Kind) -> Vec<Bytes> {
        let mut names: Vec<Bytes> = self.set(kind).iter().cloned().collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_as_redis_confirms() {
        let mut subs = Subscriptions::default();
        assert!(subs.insert(Kind::Channel, Bytes::from_static(b"a")));
        assert!(!subs.insert(Kind::Channel, Bytes::from_static(b"a")));
        assert!(subs.insert(Kind::Pattern, Bytes::from_static(b"a*")));
        assert!(subs.insert(Kind::Shard, Bytes::from_static(b"s")));
        assert_eq!(
            subs.count(Kind::Channel),
            2,
            "channels and patterns together"
        );
        assert_eq!(subs.count(Kind::Pattern), 2);
        assert_eq!(subs.count(Kind::Shard), 1, "shard channels apart");
        assert!(subs.remove(Kind::Channel, b"a"));
        assert!(!subs.remove(Kind::Channel, b"a"));
        subs.clear(Kind::Pattern);
        subs.clear(Kind::Shard);
        assert!(subs.is_empty());
    }
}
