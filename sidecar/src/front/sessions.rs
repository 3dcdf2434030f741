//! Who owns which Engine.IO session: this pod's own sessions, and the fleet's records of
//! everyone's in the backplane.
//!
//! A session's owner is the pod whose app answered its handshake. The owner records
//! `<prefix>switchboard:sid:<sid>` → its front's advertised address (`SET … PX ttl`) before the
//! handshake's answer leaves, so the client's next request, wherever the balancer sends it,
//! finds the record. While the session lives (a request in flight, an upgraded connection
//! open, or a request within the TTL) the owner renews the record every third of the TTL; after
//! that it deletes it. A pod that dies stops renewing, and its records expire within the TTL.
//! Other pods cache what they read for [`CACHE_FOR`], so a busy session costs the backplane one
//! read per pod every few seconds, not one per request.
//!
//! In a pod whose app runs several workers (one port each), a session also belongs to the
//! worker that answered its handshake. The owner keeps that itself; its record names it too
//! (`<address>/<worker>`, worker 0 written as the bare address) so that a front that restarts
//! while the app keeps its sessions still sends each to its worker. Other fronts read only the
//! address: they forward to the owner's front, which picks the worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::resp::Protocol;
use crate::upstream::routing::Routes;

/// How long an owner read from the backplane is trusted.
const CACHE_FOR: Duration = Duration::from_secs(2);

/// Renewals sent to the backplane at once (pipelined on the pooled links).
const BATCH: usize = 512;

/// Most remote owners cached at once (forgotten all together beyond it: a cache, not a store).
const CACHE_MAX: usize = 10_000;

/// One of this pod's sessions.
struct Own {
    /// The app worker (an index into `--front-app`) that opened it.
    worker: usize,
    /// Requests in flight and upgraded connections open: while any, the session lives.
    active: usize,
    last_seen: Instant,
}

/// Where a session's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This pod's app, the worker with this index.
    Here(usize),
    /// Another pod's front, at this address.
    There(String),
    /// Nobody records it (unknown, expired, or never recorded).
    Nobody,
}

pub struct Directory {
    routes: Option<Arc<Routes>>,
    prefix: String,
    /// This front's advertised address, the value of its records.
    me: String,
    ttl: Duration,
    max: usize,
    own: Mutex<HashMap<String, Own>>,
    remote: Mutex<HashMap<String, (String, Instant)>>,
    metrics: Arc<Metrics>,
}

impl Directory {
    /// `routes`: the backplane's links (none when embedded: every session is this pod's).
    pub fn new(
        routes: Option<Arc<Routes>>,
        prefix: &str,
        me: String,
        ttl: Duration,
        max: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Directory {
            routes,
            prefix: prefix.to_owned(),
            me,
            ttl,
            max,
            own: Mutex::default(),
            remote: Mutex::default(),
            metrics,
        })
    }

    fn key(&self, sid: &str) -> Bytes {
        Bytes::from(format!("{}switchboard:sid:{sid}", self.prefix))
    }

    /// Runs one command on the backplane, on the links of the key's slot.
    async fn call(&self, key: &Bytes, args: Vec<Bytes>) -> Result<Bytes, String> {
        let routes = self.routes.as_ref().ok_or("no backplane")?;
        let link = routes
            .pool(routes.by_key(key))
            .pooled(Protocol::Resp2)
            .await
            .map_err(|e| e.to_string())?;
        let command = crate::resp::Command::from_args(args);
        let reply = link.call(command.raw).await.unwrap_or_else(|e| e);
        match reply.first() {
            Some(b'-') => Err(String::from_utf8_lossy(&reply).trim().to_owned()),
            _ => Ok(reply),
        }
    }

    /// Runs one command per session, pipelined ([`BATCH`] at a time); returns how many failed
    /// and the last error.
    async fn call_each(
        &self,
        sessions: &[(String, usize)],
        args: impl Fn(&Bytes, usize) -> Vec<Bytes>,
    ) -> (usize, Option<String>) {
        let (mut failed, mut last) = (0, None);
        for batch in sessions.chunks(BATCH) {
            let calls = batch.iter().map(|(sid, worker)| {
                let key = self.key(sid);
                let args = args(&key, *worker);
                async move { self.call(&key, args).await }
            });
            for result in futures::future::join_all(calls).await {
                if let Err(e) = result {
                    failed += 1;
                    last = Some(e);
                }
            }
        }
        (failed, last)
    }

    /// Records a session this pod's app `worker` just opened, before its handshake is
    /// answered. `false` if it could not be (the front's bound reached, the backplane
    /// unreachable): the session still works through this pod (beyond the bound, only when it
    /// is the first worker's), and the metric counts it.
    pub async fn opened(&self, sid: &str, worker: usize) -> bool {
        {
            let mut own = self.own.lock().expect("sessions lock poisoned");
            if own.len() >= self.max && !own.contains_key(sid) {
                drop(own);
                self.unrecorded(sid, "--front-max-sessions reached");
                return false;
            }
            own.insert(
                sid.to_owned(),
                Own {
                    worker,
                    active: 0,
                    last_seen: Instant::now(),
                },
            );
            self.metrics.front_sessions.set(own.len() as i64);
        }
        if self.routes.is_none() {
            return true;
        }
        match self.renew(sid, worker).await {
            Ok(()) => true,
            Err(e) => {
                self.unrecorded(sid, &e);
                false
            }
        }
    }

    fn unrecorded(&self, sid: &str, why: &str) {
        self.metrics.front_sessions_unrecorded.inc();
        let n = self.metrics.front_sessions_unrecorded.get();
        if n == 1 || n.is_multiple_of(1000) {
            tracing::warn!(
                sid,
                reason = why,
                unrecorded_total = n,
                "a new session is not recorded in the backplane: only this pod can serve it"
            );
        }
    }

    async fn renew(&self, sid: &str, worker: usize) -> Result<(), String> {
        let key = self.key(sid);
        self.call(&key, self.record(&key, worker)).await.map(|_| ())
    }

    /// `SET <key> <this front>[/<worker>] PX <ttl>`: a session's record, written and renewed
    /// alike.
    fn record(&self, key: &Bytes, worker: usize) -> Vec<Bytes> {
        let value = match worker {
            0 => self.me.clone(),
            w => format!("{}/{w}", self.me),
        };
        vec![
            Bytes::from_static(b"SET"),
            key.clone(),
            Bytes::from(value),
            Bytes::from_static(b"PX"),
            Bytes::from(self.ttl.as_millis().to_string()),
        ]
    }

    /// Who serves `sid`: this pod if it is its own, else the backplane's record (cached).
    pub async fn owner(&self, sid: &str) -> Owner {
        if let Some(s) = self.own.lock().expect("sessions lock poisoned").get(sid) {
            return Owner::Here(s.worker);
        }
        if self.routes.is_none() {
            return Owner::Nobody;
        }
        if let Some((record, at)) = self.remote.lock().expect("cache lock poisoned").get(sid)
            && at.elapsed() < CACHE_FOR
        {
            return self.owner_at(record);
        }
        let key = self.key(sid);
        let record = match self
            .call(&key, vec![Bytes::from_static(b"GET"), key.clone()])
            .await
        {
            Ok(reply) => match crate::resp::value::parse(&reply) {
                Ok(crate::resp::Value::Bulk(record)) => {
                    String::from_utf8_lossy(&record).into_owned()
                }
                _ => return Owner::Nobody,
            },
            Err(e) => {
                tracing::warn!(sid, error = %e, "cannot read a session's owner from the backplane: the local app answers");
                return Owner::Nobody;
            }
        };
        let mut cache = self.remote.lock().expect("cache lock poisoned");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(sid.to_owned(), (record.clone(), Instant::now()));
        drop(cache);
        let owner = self.owner_at(&record);
        if let Owner::Here(worker) = owner {
            // Recorded by this front before it restarted (the app kept its sessions): renewed
            // again from now on.
            self.adopt(sid, worker);
        }
        owner
    }

    /// Whom a record (`<address>` or `<address>/<worker>`) names.
    fn owner_at(&self, record: &str) -> Owner {
        let (addr, worker) = match record.split_once('/') {
            Some((addr, worker)) => (addr, worker.parse().unwrap_or(0)),
            None => (record, 0),
        };
        if addr == self.me {
            Owner::Here(worker)
        } else {
            Owner::There(addr.to_owned())
        }
    }

    fn adopt(&self, sid: &str, worker: usize) {
        let mut own = self.own.lock().expect("sessions lock poisoned");
        if own.len() < self.max {
            own.entry(sid.to_owned()).or_insert(Own {
                worker,
                active: 0,
                last_seen: Instant::now(),
            });
            self.metrics.front_sessions.set(own.len() as i64);
        }
    }

    /// A request for one of this pod's sessions starts (see [`Directory::end`]).
    pub fn begin(&self, sid: &str) {
        if let Some(s) = self
            .own
            .lock()
            .expect("sessions lock poisoned")
            .get_mut(sid)
        {
            s.active += 1;
            s.last_seen = Instant::now();
        }
    }

    pub fn end(&self, sid: &str) {
        if let Some(s) = self
            .own
            .lock()
            .expect("sessions lock poisoned")
            .get_mut(sid)
        {
            s.active = s.active.saturating_sub(1);
            s.last_seen = Instant::now();
        }
    }

    /// A peer at `addr` could not be reached: forget what was read about it.
    pub fn forget(&self, sid: &str) {
        self.remote.lock().expect("cache lock poisoned").remove(sid);
    }

    /// Renews the records of the sessions that live, deletes those of the ones that ended,
    /// every third of the TTL, until the process ends.
    pub async fn keep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (live, ended) = {
                let mut own = self.own.lock().expect("sessions lock poisoned");
                let mut ended = Vec::new();
                own.retain(|sid, s| {
                    let lives = s.active > 0 || s.last_seen.elapsed() < self.ttl;
                    if !lives {
                        ended.push((sid.clone(), s.worker));
                    }
                    lives
                });
                self.metrics.front_sessions.set(own.len() as i64);
                let live: Vec<(String, usize)> =
                    own.iter().map(|(sid, s)| (sid.clone(), s.worker)).collect();
                (live, ended)
            };
            if self.routes.is_none() {
                continue;
            }
            let (_, error) = self
                .call_each(&ended, |key, _| {
                    vec![Bytes::from_static(b"DEL"), key.clone()]
                })
                .await;
            if let Some(error) = error {
                tracing::debug!(%error, "cannot delete ended sessions' records; they expire");
            }
            let (failed, error) = self
                .call_each(&live, |key, worker| self.record(key, worker))
                .await;
            if let Some(error) = error {
                tracing::warn!(failed, sessions = live.len(), %error, "cannot renew session records in the backplane; they expire if this lasts");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(me: &str) -> Arc<Directory> {
        Directory::new(
            None,
            "",
            me.to_owned(),
            Duration::from_secs(30),
            10,
            Arc::new(Metrics::default()),
        )
    }

    #[test]
    fn a_record_names_the_front_and_past_the_first_the_worker() {
        let d = directory("10.0.0.5:9093");
        let value = |worker| d.record(&d.key("s1"), worker)[2].clone();
        assert_eq!(value(0), "10.0.0.5:9093");
        assert_eq!(value(2), "10.0.0.5:9093/2");
        assert_eq!(d.owner_at("10.0.0.5:9093"), Owner::Here(0));
        assert_eq!(d.owner_at("10.0.0.5:9093/2"), Owner::Here(2));
        assert_eq!(
            d.owner_at("10.0.0.6:9093/1"),
            Owner::There("10.0.0.6:9093".into()),
            "another pod's front picks the worker itself"
        );
    }

    #[tokio::test]
    async fn an_own_session_stays_with_the_worker_that_opened_it() {
        let d = directory("127.0.0.1:9093");
        assert!(d.opened("a", 1).await);
        assert!(d.opened("b", 0).await);
        assert_eq!(d.owner("a").await, Owner::Here(1));
        assert_eq!(d.owner("b").await, Owner::Here(0));
        assert_eq!(d.owner("c").await, Owner::Nobody);
    }
}
