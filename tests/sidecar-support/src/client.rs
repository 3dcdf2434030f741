//! A raw RESP client: writes exactly the bytes it is given and returns reply frames exactly as
//! they arrived, so a test sees what a client library would see before any decoding.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::resp::{frame_len, show};

/// How long a test waits for a reply that should come. Generous: the machine is small and shared,
/// and a reply that never comes fails the test at this deadline rather than hanging it.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(10);

/// Why no frame was read.
#[derive(Debug)]
pub enum ReadError {
    /// The deadline passed; holds what had arrived of a partial frame.
    Timeout(Vec<u8>),
    /// The server closed the connection (EOF or reset); holds any partial frame.
    Closed(Vec<u8>),
    /// The bytes are not RESP.
    Invalid(String),
}

pub struct RawClient {
    /// Names the connection in failure messages (`"sub"`, `"pub"`, …).
    pub name: String,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub fn connect(addr: SocketAddr, name: &str) -> Self {
        let deadline = Instant::now() + REPLY_DEADLINE;
        let stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() > deadline => panic!("{name}: connect {addr}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        Self {
            name: name.to_string(),
            stream,
            buf: Vec::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream
            .local_addr()
            .expect("local address of a connected socket")
    }

    /// The same socket, for writing from another thread while this client reads.
    pub fn try_clone_stream(&self) -> TcpStream {
        self.stream.try_clone().expect("clone a connected socket")
    }

    /// Writes raw bytes in one `write_all` (several commands in one call is pipelining).
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        if let Err(e) = self.stream.write_all(bytes) {
            panic!("{}: write {}: {e}", self.name, show(bytes));
        }
    }

    /// Writes raw bytes that the server may refuse halfway (it replies and closes on a protocol
    /// error without reading the rest): a reset or broken pipe is not a failure here.
    pub fn send_allow_close(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        match self.stream.write_all(bytes) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
            Err(e) => panic!("{}: write {}: {e}", self.name, show(bytes)),
        }
    }

    /// Reads one frame, waiting at most `timeout`.
    pub fn try_read_frame(&mut self, timeout: Duration) -> Result<Vec<u8>, ReadError> {
        let deadline = Instant::now() + timeout;
        loop {
            match frame_len(&self.buf) {
                Ok(Some(n)) => return Ok(self.buf.drain(..n).collect()),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Invalid(e)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadError::Timeout(self.buf.clone()));
            }
            self.stream
                .set_read_timeout(Some(left))
                .expect("set read timeout");
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ReadError::Closed(std::mem::take(&mut self.buf))),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(ReadError::Closed(std::mem::take(&mut self.buf))),
            }
        }
    }

    /// Reads one frame or fails the test naming the connection and what did arrive.
    pub fn read_frame(&mut self) -> Vec<u8> {
        match self.try_read_frame(REPLY_DEADLINE) {
            Ok(frame) => frame,
            Err(ReadError::Timeout(partial)) => panic!(
                "{}: no complete reply within {REPLY_DEADLINE:?}; partial: {:?}",
                self.name,
                show(&partial)
            ),
            Err(ReadError::Closed(partial)) => panic!(
                "{}: connection closed while waiting for a reply; partial: {:?}",
                self.name,
                show(&partial)
            ),
            Err(ReadError::Invalid(e)) => panic!("{}: reply is not RESP: {e}", self.name),
        }
    }

    pub fn read_frames(&mut self, n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|_| self.read_frame()).collect()
    }

    /// Sends `bytes` and reads one reply.
    pub fn call(&mut self, bytes: impl AsRef<[u8]>) -> Vec<u8> {
        self.send(bytes);
        self.read_frame()
    }

    /// Reads every remaining frame until the server closes the connection; fails if it stays open
    /// past the deadline. Returns the frames read before the close.
    pub fn read_until_closed(&mut self) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + REPLY_DEADLINE;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_read_frame(left) {
                Ok(frame) => frames.push(frame),
                Err(ReadError::Closed(partial)) if partial.is_empty() => return frames,
                Err(ReadError::Closed(partial)) => panic!(
                    "{}: closed in the middle of a frame: {:?}",
                    self.name,
                    show(&partial)
                ),
                Err(ReadError::Timeout(partial)) => panic!(
                    "{}: still open {REPLY_DEADLINE:?} after it should have been closed; \
                     frames so far {:?}, partial {:?}",
                    self.name,
                    frames.iter().map(|f| show(f)).collect::<Vec<_>>(),
                    show(&partial)
                ),
                Err(ReadError::Invalid(e)) => panic!("{}: reply is not RESP: {e}", self.name),
            }
        }
    }

    /// Asserts that nothing arrives within `quiet`. Only a supplement to a marker round trip: a
    /// quiet period proves little on its own on a loaded machine.
    pub fn assert_nothing_within(&mut self, quiet: Duration) {
        match self.try_read_frame(quiet) {
            Err(ReadError::Timeout(partial)) if partial.is_empty() => {}
            Ok(frame) => panic!("{}: unexpected frame {:?}", self.name, show(&frame)),
            Err(other) => panic!("{}: expected silence, got {other:?}", self.name),
        }
    }
}
