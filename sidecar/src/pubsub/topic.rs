//! What a subscription is to: a channel, a pattern, or a shard channel. Names are the
//! application's own (the channel prefix is added only on the wire to the backplane).

use bytes::Bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Channel,
    Pattern,
    Shard,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Channel, Kind::Pattern, Kind::Shard];

    pub fn subscribe_command(self) -> &'static str {
        match self {
            Kind::Channel => "SUBSCRIBE",
            Kind::Pattern => "PSUBSCRIBE",
            Kind::Shard => "SSUBSCRIBE",
        }
    }

    pub fn unsubscribe_command(self) -> &'static str {
        match self {
            Kind::Channel => "UNSUBSCRIBE",
            Kind::Pattern => "PUNSUBSCRIBE",
            Kind::Shard => "SUNSUBSCRIBE",
        }
    }

    /// The first element of a confirmation frame, as Redis writes it.
    pub fn confirmation(self, subscribing: bool) -> &'static str {
        match (self, subscribing) {
            (Kind::Channel, true) => "subscribe",
            (Kind::Pattern, true) => "psubscribe",
            (Kind::Shard, true) => "ssubscribe",
            (Kind::Channel, false) => "unsubscribe",
            (Kind::Pattern, false) => "punsubscribe",
            (Kind::Shard, false) => "sunsubscribe",
        }
    }

    /// The first element of a delivered message.
    pub fn message_word(self) -> &'static [u8] {
        match self {
            Kind::Channel => b"message",
            Kind::Pattern => b"pmessage",
            Kind::Shard => b"smessage",
        }
    }

    /// The tag this kind's counts carry in the fleet registry (`c:<name>` and so on).
    pub fn registry_tag(self) -> u8 {
        match self {
            Kind::Channel => b'c',
            Kind::Pattern => b'p',
            Kind::Shard => b's',
        }
    }

    pub fn from_registry_tag(tag: u8) -> Option<Self> {
        Kind::ALL.into_iter().find(|k| k.registry_tag() == tag)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic {
    pub kind: Kind,
    pub name: Bytes,
}

impl Topic {
    pub fn new(kind: Kind, name: Bytes) -> Self {
        Topic { kind, name }
    }

    /// The registry field for this topic: its kind's tag, `:`, then the name.
    pub fn registry_field(&self) -> Bytes {
        let mut f = Vec::with_capacity(self.name.len() + 2);
        f.push(self.kind.registry_tag());
        f.push(b':');
        f.extend_from_slice(&self.name);
        f.into()
    }

    pub fn from_registry_field(field: &Bytes) -> Option<Self> {
        match field.get(..2) {
            Some([tag, b':']) => Some(Topic::new(Kind::from_registry_tag(*tag)?, field.slice(2..))),
            _ => None,
        }
    }
}
