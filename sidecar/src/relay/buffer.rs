//! Publishes made while the backplane is unreachable, held in order and bounded by bytes and by
//! count. What does not fit is refused so the caller can count and log it; nothing is dropped
//! silently.

use std::collections::VecDeque;

use bytes::Bytes;

#[derive(Debug)]
pub struct PublishBuffer {
    queue: VecDeque<Bytes>,
    bytes: usize,
    max_bytes: usize,
    max_messages: usize,
}

impl PublishBuffer {
    pub fn new(max_bytes: usize, max_messages: usize) -> Self {
        PublishBuffer {
            queue: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_messages,
        }
    }

    /// Appends an encoded PUBLISH; false if the buffer is full.
    pub fn push(&mut self, command: Bytes) -> bool {
        if self.queue.len() >= self.max_messages || self.bytes + command.len() > self.max_bytes {
            return false;
        }
        self.bytes += command.len();
        self.queue.push_back(command);
        true
    }

    /// Inserts an encoded PUBLISH at `index` (clamped to the end); false if the buffer is full.
    pub fn insert(&mut self, index: usize, command: Bytes) -> bool {
        if self.queue.len() >= self.max_messages || self.bytes + command.len() > self.max_bytes {
            return false;
        }
        self.bytes += command.len();
        self.queue.insert(index.min(self.queue.len()), command);
        true
    }

    /// Puts back publishes that were sent but never acknowledged before the connection died,
    /// ahead of everything buffered since, preserving the original order. These are never
    /// refused: they were accepted already, and are at most what one connection had in flight.
    pub fn requeue_front(&mut self, in_flight: Vec<Bytes>) {
        for command in in_flight.into_iter().rev() {
            self.bytes += command.len();
            self.queue.push_front(command);
        }
    }

    pub fn drain(&mut self) -> impl Iterator<Item = Bytes> + '_ {
        self.bytes = 0;
        self.queue.drain(..)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_bytes_and_count_and_keeps_order() {
        let mut b = PublishBuffer::new(10, 3);
        assert!(b.push(Bytes::from_static(b"aaaa")));
        assert!(b.push(Bytes::from_static(b"bbbb")));
        assert!(!b.push(Bytes::from_static(b"ccc")), "11 bytes is over 10");
        assert!(b.push(Bytes::from_static(b"cc")));
        assert!(
            !b.push(Bytes::from_static(b"")),
            "a fourth message is over 3"
        );
        b.requeue_front(vec![Bytes::from_static(b"x"), Bytes::from_static(b"y")]);
        let order: Vec<Bytes> = b.drain().collect();
        assert_eq!(order, vec![&b"x"[..], b"y", b"aaaa", b"bbbb", b"cc"]);
    }

    #[test]
    fn inserts_in_place_within_the_same_bounds() {
        let mut b = PublishBuffer::new(10, 4);
        assert!(b.push(Bytes::from_static(b"a")));
        assert!(b.push(Bytes::from_static(b"c")));
        assert!(b.insert(1, Bytes::from_static(b"b")));
        assert!(
            !b.insert(0, Bytes::from_static(b"00000000")),
            "over the bytes"
        );
        assert!(
            b.insert(9, Bytes::from_static(b"d")),
            "past the end: appended"
        );
        assert!(!b.insert(0, Bytes::from_static(b"e")), "over the count");
        let order: Vec<Bytes> = b.drain().collect();
        assert_eq!(order, vec![&b"a"[..], b"b", b"c", b"d"]);
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
    }
}
