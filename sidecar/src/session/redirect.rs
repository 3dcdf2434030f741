//! Following a Redis Cluster's redirections for a local client, as a cluster-aware client does.
//!
//! While a slot migrates, the node that served it answers `-ASK <slot> <host:port>` for keys
//! already moved, and once the slot is handed over `-MOVED <slot> <host:port>`. The app's
//! Redis client knows nothing of clusters (python-socketio, ioredis or node-redis in plain
//! mode), so the sidecar runs the command again on the node named (after `ASKING` for
//! `-ASK`) and gives the app that reply, in the command's place among the client's replies:
//! the replies behind a redirected one wait for it. A `-MOVED` also has the slot map read
//! again, so the client's next commands go to the right node directly.
//!
//! Only commands that hold no connection state are followed (not inside `MULTI`, under
//! `WATCH` or as another ACL user): that state lives on the node they ran on, and for them
//! the cluster's answer reaches the app as Redis Cluster gives it.
//!
//! A client's redirected commands run one at a time, in order, in one task that lives while
//! it has some, on links it opens to the nodes named (kept for the burst), so they also keep
//! their order on the new node. A command is redirected at most [`HOPS`] times.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::passthrough::Port;
use crate::resp::{Protocol, Reply};
use crate::upstream::Addr;
use crate::upstream::pipeline::{Pipeline, is_redirect, name_of};

/// Redirections followed for one command before its last answer is given as it is (a slot
/// bouncing between nodes that disagree).
const HOPS: usize = 5;

/// A client's replies held behind redirected commands, and those commands.
#[derive(Default)]
pub(super) struct Order {
    /// In the client's order; `None` is a redirected command's place, filled oldest first.
    held: VecDeque<Option<(Bytes, bool)>>,
    jobs: VecDeque<Job>,
    running: bool,
}

pub(super) struct Job {
    command: Bytes,
    frame: Bytes,
    silent: bool,
    proto: Protocol,
}

impl Order {
    /// Whether replies must wait (a redirected command before them is not answered yet).
    pub(super) fn holds(&self) -> bool {
        !self.held.is_empty()
    }

    pub(super) fn hold(&mut self, frame: Bytes, silent: bool) {
        self.held.push_back(Some((frame, silent)));
    }

    /// Takes a redirected command's place; true if no task follows this client's yet.
    pub(super) fn redirect(
        &mut self,
        command: Bytes,
        frame: Bytes,
        silent: bool,
        proto: Protocol,
    ) -> bool {
        self.held.push_back(None);
        self.jobs.push_back(Job {
            command,
            frame,
            silent,
            proto,
        });
        !std::mem::replace(&mut self.running, true)
    }

    /// The next command to run again; `None` ends the task.
    pub(super) fn next(&mut self) -> Option<Job> {
        let job = self.jobs.pop_front();
        self.running = job.is_some();
        job
    }

    /// The oldest redirected command's reply is in: the replies now ready, in order.
    pub(super) fn answered(&mut self, frame: Bytes, silent: bool) -> Vec<(Bytes, bool)> {
        if let Some(place) = self.held.iter_mut().find(|h| h.is_none()) {
            *place = Some((frame, silent));
        }
        let mut ready = Vec::new();
        while let Some(Some(_)) = self.held.front() {
            ready.push(self.held.pop_front().flatten().expect("checked"));
        }
        ready
    }
}

/// Where a redirection points: `(asking, node)`.
fn target(frame: &[u8]) -> Option<(bool, Addr)> {
    let text = std::str::from_utf8(frame).ok()?.trim_end();
    let mut parts = text.split(' ');
    let asking = match parts.next()? {
        "-MOVED" => false,
        "-ASK" => true,
        _ => return None,
    };
    let _slot: u16 = parts.next()?.parse().ok()?;
    // `host:port`; an IPv6 host is written without brackets (`::1:7000`).
    let (host, port) = parts.next()?.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((
        asking,
        Addr {
            host: host.to_owned(),
            port: port.parse().ok()?,
        },
    ))
}

/// Runs `port`'s redirected commands again until none is left.
pub(super) async fn follow(port: Arc<Port>) {
    let mut links: HashMap<String, Pipeline> = HashMap::new();
    while let Some(job) = port.next_redirect() {
        let reply = run(&port, &mut links, &job).await;
        port.redirect_answered(reply, job.silent);
    }
}

/// One command, where the cluster sends it: its reply, or an error that says why not.
async fn run(port: &Port, links: &mut HashMap<String, Pipeline>, job: &Job) -> Bytes {
    let mut frame = job.frame.clone();
    for _ in 0..HOPS {
        let Some((asking, addr)) = target(&frame) else {
            return frame;
        };
        port.count_redirect(!asking);
        let key = addr.to_string();
        let link = match links.get(&key).filter(|l| l.is_alive()) {
            Some(link) => link.clone(),
            None => match port.open_to(&addr, job.proto).await {
                Ok(link) => links.entry(key).insert_entry(link).get().clone(),
                Err(e) => {
                    return Reply::error(format!(
                        "ERR switchboard: the cluster redirected '{}' to {addr}, which could not be reached; not run: {e}",
                        name_of(&job.command)
                    ))
                    .to_bytes(Protocol::Resp2);
                }
            },
        };
        if asking {
            match link.call(crate::upstream::command(&["ASKING"]).raw).await {
                Ok(ok) if ok.first() != Some(&b'-') => {}
                Ok(error) | Err(error) => return error,
            }
        }
        frame = match link.call(job.command.clone()).await {
            Ok(frame) | Err(frame) => frame,
        };
        if !is_redirect(&frame) {
            return frame;
        }
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_redirections() {
        let (asking, addr) = target(b"-ASK 3999 127.0.0.1:7002\r\n").unwrap();
        assert!(asking);
        assert_eq!(addr.to_string(), "127.0.0.1:7002");
        let (asking, addr) = target(b"-MOVED 15495 ::1:7000\r\n").unwrap();
        assert!(!asking);
        assert_eq!((addr.host.as_str(), addr.port), ("::1", 7000));
        assert!(target(b"-MOVED x 127.0.0.1:7002\r\n").is_none());
        assert!(target(b"-ERR nope\r\n").is_none());
        assert!(target(b"-MOVED 1 nohost\r\n").is_none());
    }

    #[test]
    fn replies_behind_a_redirected_command_wait_for_it_in_order() {
        let mut order = Order::default();
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert!(!order.holds());
        assert!(order.redirect(b("c1"), b("-ASK 1 h:1\r\n"), false, Protocol::Resp2));
        order.hold(b("r2"), false);
        assert!(
            !order.redirect(b("c3"), b("-ASK 1 h:1\r\n"), true, Protocol::Resp2),
            "one task per client"
        );
        order.hold(b("r4"), false);
        assert!(order.holds());
        assert_eq!(order.next().map(|j| j.command), Some(b("c1")));
        assert_eq!(
            order.answered(b("r1"), false),
            vec![(b("r1"), false), (b("r2"), false)]
        );
        assert_eq!(order.next().map(|j| j.command), Some(b("c3")));
        assert_eq!(
            order.answered(b("r3"), true),
            vec![(b("r3"), true), (b("r4"), false)]
        );
        assert!(!order.holds());
        assert!(order.next().is_none());
        assert!(
            order.redirect(b("c5"), b("-MOVED 1 h:1\r\n"), false, Protocol::Resp2),
            "the task ended: a new one"
        );
    }
}
