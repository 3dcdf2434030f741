//! Pass-through: which upstream link a local client's command takes, and the connection state
//! the client holds there.
//!
//! Redis keeps some state per connection. A command that neither reads nor changes it can run on
//! any connection, so it goes out on one of a few **pooled** links shared by every local client
//! (`--passthrough-pool-size`, per protocol), pipelined with everyone else's commands. A command
//! that binds state to its connection takes a **dedicated** link, lent to this client alone for as
//! long as the state lasts. Decided from Redis 7.0's command table (`COMMAND INFO` flags and
//! the `@transaction` / `@connection` categories):
//!
//! | class | commands | the dedicated link is held |
//! |---|---|---|
//! | transaction | `MULTI` … `EXEC` / `DISCARD` | from `MULTI` until `EXEC` or `DISCARD` answers |
//! | optimistic lock | `WATCH` | until `EXEC`, `DISCARD`, `UNWATCH` |
//! | blocking (flag `blocking`) | `BLPOP`, `BRPOP`, `BRPOPLPUSH`, `BLMOVE`, `BLMPOP`, `BZPOPMIN`, `BZPOPMAX`, `BZMPOP`, `XREAD`/`XREADGROUP` with `BLOCK`; also `WAIT`, `WAITAOF` | until it and everything pipelined behind it are answered |
//! | database | `SELECT n` (n ≠ 0) | until `SELECT 0` |
//! | user | `AUTH <user> <password>` for a user other than `default` | until `AUTH` as `default` or `RESET` |
//!
//! The rest of `@connection` is answered by the sidecar itself (`PING`, `ECHO`, `HELLO`,
//! `CLIENT ID|SETNAME|GETNAME|SETINFO|INFO|REPLY`, `RESET`, `QUIT`, see `commands`) or refused
//! (`CLIENT TRACKING|CACHING|KILL|LIST|PAUSE|UNBLOCK|NO-EVICT`, `MONITOR`); `CLIENT REPLY OFF|SKIP`
//! is applied here by dropping replies, so every link still answers every command and stays in
//! step. `READONLY`, `READWRITE` and `ASKING` only matter to Redis Cluster and are pooled.
//! Scripts and functions run on any link (since 7.0 a script's `SELECT` does not leak out).
//!
//! On a Redis Cluster each command takes the links of the primary serving its first key's
//! slot (see `upstream::routing`); a client that moves to another primary changes links as
//! below. A transaction takes its node from its first queued command: `MULTI` is answered
//! here and sent, with that command, to the node the command belongs on; a dedicated link
//! keeps its node while its state lasts, and the node answers anything of another slot as
//! Redis Cluster does (`-MOVED`, `-CROSSSLOT`).
//!
//! Ordering: a client's replies are returned in its own order because it uses one link at a time
//! and a link answers in order; it changes links (pooled → dedicated, a lost link → a new one)
//! and runs a command the sidecar answers itself only once every reply it awaits has arrived.
//! At most `--max-in-flight` of its commands are unanswered at once; beyond that its reads
//! pause, so a client that pipelines without reading is held back at its socket, not buffered,
//! and each pooled link's queue holds at most that many of any one client's commands — one
//! client's flood cannot stall the others for longer than that.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::sync::Notify;

use super::command::Forward;
use super::redirect::{self, Order};
use super::{Flow, Gone, Session};
use crate::pubsub::Outbox;
use crate::resp::{Command, Reply, Value, value};
use crate::upstream::pipeline::{Pipeline, Recipient, Sink, not_run_error};
use crate::upstream::routing::{Route, Routes};

/// Where a client's pass-through replies arrive: its outbox, counted so the session knows what
/// it still awaits (a reply held behind a redirected command's still counts).
pub struct Port {
    outbox: Outbox,
    in_flight: AtomicUsize,
    settled: Notify,
    /// The relay, told when the cluster answers `-MOVED` (its slot map is stale).
    relay: Arc<crate::relay::Relay>,
    /// On a Redis Cluster: where redirected commands run again (see `session::redirect`).
    routes: Option<Arc<Routes>>,
    order: Mutex<Order>,
    metrics: Arc<crate::metrics::Metrics>,
    me: Weak<Port>,
}

impl Port {
    pub fn new(
        outbox: Outbox,
        relay: Arc<crate::relay::Relay>,
        routes: Option<Arc<Routes>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Port {
            outbox,
            in_flight: AtomicUsize::new(0),
            settled: Notify::new(),
            relay,
            routes,
            order: Mutex::new(Order::default()),
            metrics,
            me: me.clone(),
        })
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn order(&self) -> std::sync::MutexGuard<'_, Order> {
        self.order
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One reply reaches the client (or is counted and dropped, `silent`).
    fn emit(&self, frame: Bytes, silent: bool) {
        if !silent {
            self.outbox.reply(frame);
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.settled.notify_one();
    }

    pub(super) fn next_redirect(&self) -> Option<redirect::Job> {
        self.order().next()
    }

    pub(super) fn redirect_answered(&self, frame: Bytes, silent: bool) {
        let mut order = self.order();
        for (frame, silent) in order.answered(frame, silent) {
            self.emit(frame, silent);
        }
    }

    pub(super) fn count_redirect(&self, moved: bool) {
        self.metrics.commands_redirected.inc();
        if moved {
            // The slot map is stale: read again, so the next commands go to the new node.
            self.relay.slots_moved();
        }
    }

    pub(super) async fn open_to(
        &self,
        addr: &crate::upstream::Addr,
        proto: crate::resp::Protocol,
    ) -> Result<Pipeline, crate::upstream::UpstreamError> {
        let routes = self
            .routes
            .as_ref()
            .expect("only cluster commands are followed");
        routes.pool(0).open_to(addr, proto).await
    }
}

impl Recipient for Port {
    fn deliver(&self, frame: Bytes, silent: bool) {
        if frame.starts_with(b"-MOVED ") {
            // A slot migrated under a command that is not followed: the app sees the cluster's
            // answer, and the slot map is read again so the next ones go to the new primary.
            self.relay.slots_moved();
        }
        let mut order = self.order();
        if order.holds() {
            order.hold(frame, silent);
            return;
        }
        self.emit(frame, silent);
    }

    fn redirected(&self, command: Bytes, frame: Bytes, silent: bool, proto: crate::resp::Protocol) {
        let first = self.order().redirect(command, frame, silent, proto);
        if first && let Some(port) = self.me.upgrade() {
            tokio::spawn(redirect::follow(port));
        }
    }
}

/// One client's pass-through state.
pub struct Passthrough {
    port: Arc<Port>,
    pooled: Option<Pipeline>,
    dedicated: Option<Pipeline>,
    pub in_multi: bool,
    pub watching: bool,
    /// The database `SELECT` chose (0 is the pooled links' database: the URL's).
    pub db: i64,
    /// Logged in upstream as another ACL user; sent again on a replacement link.
    user: Option<(Bytes, Bytes)>,
    /// Something changed the dedicated link's state in a way the sidecar did not follow (a
    /// `SELECT` or `AUTH` queued in a transaction): it is closed, never lent again.
    tainted: bool,
    /// The shard the next command goes to, and the shards of the links held (always 0 but
    /// on a Redis Cluster).
    want: usize,
    pooled_shard: usize,
    dedicated_shard: usize,
    /// On a cluster, `MULTI` was answered here and waits for the first queued command to
    /// know its node.
    pub multi_deferred: bool,
}

impl Passthrough {
    pub fn new(port: Arc<Port>) -> Self {
        Passthrough {
            port,
            pooled: None,
            dedicated: None,
            in_multi: false,
            watching: false,
            db: 0,
            user: None,
            tainted: false,
            want: 0,
            pooled_shard: 0,
            dedicated_shard: 0,
            multi_deferred: false,
        }
    }

    /// State only a dedicated link can hold.
    fn holds_state(&self) -> bool {
        self.in_multi || self.watching || self.db != 0 || self.user.is_some()
    }

    /// Forgets the state of a lost dedicated link (Redis forgot it too).
    fn lost_dedicated(&mut self) {
        self.dedicated = None;
        self.multi_deferred = false;
        self.in_multi = false;
        self.watching = false;
        self.tainted = false;
    }

    /// Everything back to a new connection's (RESET).
    pub fn reset(&mut self) {
        self.lost_dedicated();
        self.pooled = None;
        self.db = 0;
        self.user = None;
    }
}

impl Session {
    /// Waits until every pass-through reply this client awaits has been queued to it: before a
    /// command the sidecar answers itself, and before the client changes links.
    pub(super) async fn settle(&mut self) -> Result<(), Gone> {
        self.settle_until(0).await
    }

    /// Waits until at most `most` of this client's pass-through commands are unanswered, reading
    /// ahead a little meanwhile so a client that goes away is noticed.
    async fn settle_until(&mut self, most: usize) -> Result<(), Gone> {
        const READ_AHEAD: usize = 64 * 1024;
        let port = self.pass.port.clone();
        loop {
            let settled = port.settled.notified();
            if port.in_flight() <= most {
                return Ok(());
            }
            // Once the client has closed, pooled replies still come (they are quick), but a
            // blocked command on a dedicated link may never answer: Redis drops such a client.
            let watch_input = !self.input.eof && self.input.buf.len() < READ_AHEAD;
            if self.input.eof && self.pass.dedicated.is_some() {
                return Err(Gone);
            }
            if watch_input {
                tokio::select! {
                    () = settled => {}
                    filled = self.input.fill() => {
                        if filled.is_err() && !self.input.eof {
                            return Err(Gone);
                        }
                    }
                }
            } else {
                settled.await;
            }
        }
    }

    /// Passes `command` through to the backplane, by its class.
    pub(super) async fn forward(&mut self, class: Forward, command: Command) -> Flow {
        let Some(routes) = self.ctx.routes.clone() else {
            let name = command.name();
            self.reply(Reply::error(format!(
                "ERR switchboard: '{name}' needs a backplane, and this sidecar runs embedded (no --upstream): only connection and pub/sub commands are served"
            )));
            return Flow::Continue;
        };
        if routes.is_cluster() && !self.pass.holds_state() {
            match self.shard_for(&routes, &command).await {
                Ok(Some(shard)) => self.pass.want = shard,
                Ok(None) => return Flow::Continue,
                Err(Gone) => return Flow::Close,
            }
            if class == Forward::Multi && self.pass.dedicated.is_none() {
                // Its node is the first queued command's: see `open_deferred_multi`.
                self.pass.in_multi = true;
                self.pass.multi_deferred = true;
                self.reply(Reply::ok());
                return Flow::Continue;
            }
        }
        if self.pass.multi_deferred && matches!(class, Forward::Exec | Forward::Discard) {
            // Nothing was queued: an empty transaction, answered as Redis answers it.
            self.pass.multi_deferred = false;
            self.pass.in_multi = false;
            self.pass.watching = false;
            self.reply(match class {
                Forward::Exec => Reply::Array(Vec::new()),
                _ => Reply::ok(),
            });
            return Flow::Continue;
        }
        self.ctx.metrics.commands_forwarded.inc();
        let raw = command.raw;
        let done = match class {
            Forward::Pooled => self.pipelined(raw, false).await,
            Forward::Blocking => self.pipelined(raw, true).await,
            Forward::Multi if !self.pass.in_multi => {
                self.stateful(raw, |p, ok| p.in_multi |= ok).await
            }
            Forward::Watch if !self.pass.in_multi => {
                self.stateful(raw, |p, ok| p.watching |= ok).await
            }
            Forward::Exec | Forward::Discard if self.pass.in_multi => {
                self.stateful(raw, |p, _| {
                    p.in_multi = false;
                    p.watching = false;
                })
                .await
            }
            Forward::Unwatch if self.pass.dedicated.is_some() => {
                self.stateful(raw, |p, _| p.watching = false).await
            }
            // Errors Redis answers without touching any state (nested MULTI, WATCH inside MULTI,
            // EXEC without MULTI), or commands queued inside the transaction.
            Forward::Multi
            | Forward::Watch
            | Forward::Exec
            | Forward::Discard
            | Forward::Unwatch => self.pipelined(raw, false).await,
        };
        match done {
            Ok(()) => Flow::Continue,
            Err(Gone) => Flow::Close,
        }
    }

    /// On a cluster, the shard `command` goes to (`None`: refused, and the client was told).
    async fn shard_for(
        &mut self,
        routes: &Routes,
        command: &Command,
    ) -> Result<Option<usize>, Gone> {
        match routes.route(&command.name(), command) {
            Route::Shard(shard) => Ok(Some(shard)),
            Route::Refused(error) => {
                self.settle().await?;
                self.reply(Reply::error(error));
                Ok(None)
            }
            Route::AskKeys => Ok(Some(self.ask_keys(routes, command).await)),
        }
    }

    /// The shard of a command whose keys move with its arguments, by the first key the cluster
    /// finds in it (`COMMAND GETKEYS`). No keys, or an error, go to shard 0, whose node then
    /// answers the command itself (with the same error).
    async fn ask_keys(&mut self, routes: &Routes, command: &Command) -> usize {
        let mut args = vec![
            Bytes::from_static(b"COMMAND"),
            Bytes::from_static(b"GETKEYS"),
        ];
        args.extend(command.args.iter().cloned());
        let Ok(link) = routes.pool(0).pooled(self.proto).await else {
            return 0;
        };
        let Ok(frame) = link.call(Command::from_args(args).raw).await else {
            return 0;
        };
        match value::parse(&frame) {
            Ok(Value::Array(keys)) => keys
                .first()
                .and_then(Value::as_bytes)
                .map_or(0, |key| routes.by_key(key)),
            _ => 0,
        }
    }

    /// On a cluster, opens the transaction `MULTI` deferred, on the node of its first queued
    /// `command`. `false`: it could not, and the client was told.
    pub(super) async fn open_deferred_multi(&mut self, command: &Command) -> Result<bool, Gone> {
        let Some(routes) = self.ctx.routes.clone() else {
            return Ok(false);
        };
        let Some(shard) = self.shard_for(&routes, command).await? else {
            return Ok(false);
        };
        self.pass.want = shard;
        self.pass.multi_deferred = false;
        self.pass.in_multi = false;
        let multi = crate::upstream::command(&["MULTI"]).raw;
        let opened = self
            .stateful_call(multi, |p, ok| p.in_multi = ok, false)
            .await?;
        if opened != Some(true) {
            // The client believes it is in a transaction: so does Redis's own answer to a
            // later EXEC ("EXEC without MULTI" would be a lie the other way), so keep waiting.
            self.pass.in_multi = true;
            self.pass.multi_deferred = true;
            return Ok(false);
        }
        Ok(true)
    }

    /// Inside MULTI: everything is queued upstream, so EXEC runs it together. A command that
    /// changes the link's state when EXEC runs it leaves the link in a state the sidecar did not
    /// follow, so the link is not lent again.
    pub(super) async fn queue_in_transaction(&mut self, raw: Bytes, changes_link: bool) -> Flow {
        self.ctx.metrics.commands_forwarded.inc();
        self.pass.tainted |= changes_link;
        match self.pipelined(raw, false).await {
            Ok(()) => Flow::Continue,
            Err(Gone) => Flow::Close,
        }
    }

    /// Sends on the link this client uses now, without waiting for the reply: it goes straight
    /// to the outbox when it comes.
    async fn pipelined(&mut self, raw: Bytes, blocking: bool) -> Result<(), Gone> {
        self.settle_until(self.ctx.max_in_flight.saturating_sub(1))
            .await?;
        if self.pass.dedicated.is_some()
            && !self.pass.holds_state()
            && self.pass.dedicated_shard != self.pass.want
        {
            // A blocking command on another node: its reply first, then this one's node.
            self.settle().await?;
            self.release_if_clean();
        }
        let dedicated = blocking || self.pass.holds_state() || self.busy_on_dedicated();
        // The usual case, one client on the same link as its last command, costs no clone.
        let usable = match &self.pass.dedicated {
            Some(link) => dedicated && link.is_alive(),
            None => {
                !dedicated
                    && self.pass.pooled_shard == self.pass.want
                    && self.pass.pooled.as_ref().is_some_and(Pipeline::is_alive)
            }
        };
        if !usable && self.link(dedicated).await?.is_none() {
            return Ok(());
        }
        let silent = self.take_silence();
        let link = match &self.pass.dedicated {
            Some(link) => link,
            None => self.pass.pooled.as_ref().expect("link() chose one"),
        };
        self.pass.port.in_flight.fetch_add(1, Ordering::AcqRel);
        // On a cluster, a redirection is followed unless the command holds connection state.
        let follow = (self
            .pass
            .port
            .routes
            .as_ref()
            .is_some_and(|r| r.is_cluster())
            && !self.pass.holds_state())
        .then_some(self.proto);
        let sink = Sink::Client {
            to: self.pass.port.clone(),
            silent,
            follow,
        };
        // Lost between the check and the send: never written.
        if let Err((raw, Sink::Client { to, silent, .. })) = link.send(raw, sink) {
            to.deliver(
                not_run_error(&raw, "the backplane connection was lost"),
                silent,
            );
        }
        Ok(())
    }

    /// Sends a command whose reply changes what this client holds, on its dedicated link, and
    /// waits for the reply: `update` learns whether it succeeded.
    async fn stateful(
        &mut self,
        raw: Bytes,
        update: impl FnOnce(&mut Passthrough, bool),
    ) -> Result<(), Gone> {
        self.stateful_call(raw, update, true).await.map(|_| ())
    }

    /// [`Self::stateful`], telling whether the command succeeded (`None`: it could not be
    /// sent, and the client was told); with `reply_ok` false a success is not replied to.
    async fn stateful_call(
        &mut self,
        raw: Bytes,
        update: impl FnOnce(&mut Passthrough, bool),
        reply_ok: bool,
    ) -> Result<Option<bool>, Gone> {
        let Some(link) = self.link(true).await? else {
            return Ok(None);
        };
        self.settle().await?;
        match link.call(raw).await {
            Ok(frame) => {
                let ok = frame.first() != Some(&b'-');
                update(&mut self.pass, ok);
                if reply_ok || !ok {
                    self.reply_frame(frame);
                }
                self.release_if_clean();
                Ok(Some(ok))
            }
            Err(frame) => {
                self.pass.lost_dedicated();
                self.reply_frame(frame);
                Ok(None)
            }
        }
    }

    /// A dedicated link with this client's commands still in flight on it.
    fn busy_on_dedicated(&self) -> bool {
        self.pass.dedicated.is_some() && self.pass.port.in_flight() > 0
    }

    /// The link for the next command, switching (once everything in flight is answered) if the
    /// one in use is not the kind needed or was lost. `None`: the backplane is unreachable and
    /// the client was told so.
    async fn link(&mut self, dedicated: bool) -> Result<Option<Pipeline>, Gone> {
        let current = if dedicated {
            self.pass.dedicated.as_ref()
        } else if self.pass.dedicated.is_some() || self.pass.pooled_shard != self.pass.want {
            None
        } else {
            self.pass.pooled.as_ref()
        };
        if let Some(link) = current.filter(|l| l.is_alive()) {
            return Ok(Some(link.clone()));
        }
        self.settle().await?;
        let routes = self
            .ctx
            .routes
            .clone()
            .expect("forward checks for a backplane");
        let shard = self.pass.want;
        let pool = routes.pool(shard);
        if !dedicated {
            self.release_if_clean();
            if self.pass.dedicated.is_some() {
                // Still holds state: stay on the dedicated link.
                return Box::pin(self.link(true)).await;
            }
            return match self.retrying(|| pool.pooled(self.proto)).await {
                Ok(link) => {
                    self.pass.pooled = Some(link.clone());
                    self.pass.pooled_shard = shard;
                    Ok(Some(link))
                }
                Err(e) => {
                    self.unreachable(e);
                    Ok(None)
                }
            };
        }
        if self.pass.dedicated.as_ref().is_some_and(|l| !l.is_alive()) {
            self.pass.lost_dedicated();
        }
        if let Some(link) = &self.pass.dedicated {
            return Ok(Some(link.clone()));
        }
        let link = match self.retrying(|| pool.dedicated(self.proto)).await {
            Ok(link) => link,
            Err(e) => {
                self.unreachable(e);
                return Ok(None);
            }
        };
        // A replacement for a lost link takes up the database and user the client had chosen.
        let mut setup = Vec::new();
        if let Some((user, password)) = &self.pass.user {
            setup.push(Command::from_args([
                Bytes::from_static(b"AUTH"),
                user.clone(),
                password.clone(),
            ]));
        }
        if self.pass.db != 0 {
            setup.push(crate::upstream::command(&[
                "SELECT",
                &self.pass.db.to_string(),
            ]));
        }
        for command in setup {
            match link.call(command.raw).await {
                Ok(frame) if frame.first() != Some(&b'-') => {}
                Ok(frame) | Err(frame) => {
                    self.reply_frame(frame);
                    return Ok(None);
                }
            }
        }
        self.pass.dedicated = Some(link.clone());
        self.pass.dedicated_shard = shard;
        Ok(Some(link))
    }

    /// Opens a link, retrying while the backplane is unreachable (a failover, a restart) for up
    /// to `--passthrough-wait-ms`: the command waits, in order, instead of failing.
    async fn retrying<F, Fut>(
        &self,
        mut open: F,
    ) -> Result<Pipeline, crate::upstream::UpstreamError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Pipeline, crate::upstream::UpstreamError>>,
    {
        let deadline = tokio::time::Instant::now() + self.ctx.passthrough_wait;
        let mut pause = std::time::Duration::from_millis(50);
        loop {
            match open().await {
                Ok(link) => return Ok(link),
                Err(e) if tokio::time::Instant::now() + pause >= deadline => return Err(e),
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(500));
                }
            }
        }
    }

    fn unreachable(&mut self, e: crate::upstream::UpstreamError) {
        self.reply(Reply::error(format!(
            "ERR switchboard: backplane unreachable, command not run: {e}"
        )));
    }

    /// Returns the dedicated link once the client holds nothing on it.
    fn release_if_clean(&mut self) {
        if self.pass.holds_state() || self.pass.port.in_flight() > 0 {
            return;
        }
        if let Some(link) = self.pass.dedicated.take()
            && !std::mem::take(&mut self.pass.tainted)
            && let Some(routes) = &self.ctx.routes
        {
            routes
                .pool(self.pass.dedicated_shard)
                .give_back(self.proto, link);
        }
    }

    /// `SELECT` with a backplane: Redis decides whether the database exists, on a dedicated
    /// link; `SELECT 0` ends the state.
    pub(super) async fn select_upstream(&mut self, db: i64, raw: Bytes) -> Flow {
        if db == 0 && self.pass.dedicated.is_none() {
            self.pass.db = 0;
            self.reply(Reply::ok());
            return Flow::Continue;
        }
        self.ctx.metrics.commands_forwarded.inc();
        match self
            .stateful(raw, |p, ok| {
                if ok {
                    p.db = db;
                }
            })
            .await
        {
            Ok(()) => Flow::Continue,
            Err(Gone) => Flow::Close,
        }
    }

    /// `AUTH <user> <password>` for a user the sidecar does not know: the backplane's ACL
    /// decides, on a dedicated link that then runs this client's commands as that user.
    pub(super) async fn auth_upstream(&mut self, user: Bytes, password: Bytes, raw: Bytes) -> Flow {
        self.ctx.metrics.commands_forwarded.inc();
        // A refused AUTH leaves the previous user in place, as in Redis.
        let result = self
            .stateful(raw, |p, ok| {
                if ok {
                    p.user = Some((user, password));
                }
            })
            .await;
        if self.pass.user.is_some() {
            self.authenticated = true;
        }
        match result {
            Ok(()) => Flow::Continue,
            Err(Gone) => Flow::Close,
        }
    }

    /// `HELLO … AUTH <user> <password>` for a user the sidecar does not know: logs in upstream
    /// as [`Self::auth_upstream`] does; `Ok(true)` when HELLO may go on (a failure was replied).
    pub(super) async fn hello_auth_upstream(
        &mut self,
        user: Bytes,
        password: Bytes,
    ) -> Result<bool, Gone> {
        self.ctx.metrics.commands_forwarded.inc();
        let raw =
            Command::from_args([Bytes::from_static(b"AUTH"), user.clone(), password.clone()]).raw;
        let ok = self
            .stateful_call(
                raw,
                |p, ok| {
                    if ok {
                        p.user = Some((user, password));
                    }
                },
                false,
            )
            .await?;
        if ok == Some(true) {
            self.authenticated = true;
        }
        Ok(ok == Some(true))
    }

    /// Back to the `default` user: a link logged in as another one is closed, not lent again.
    pub(super) fn drop_upstream_user(&mut self) {
        if self.pass.user.take().is_some() {
            self.pass.tainted = true;
            self.release_if_clean();
        }
    }

    /// The client switched protocols: pooled links of the other protocol from now on, and a
    /// dedicated link it keeps is switched too (its reply is not the client's).
    pub(super) fn protocol_changed(&mut self) {
        self.pass.pooled = None;
        if let Some(link) = &self.pass.dedicated {
            let hello = crate::upstream::command(&["HELLO", &self.proto.version().to_string()]);
            let _ = link.send(hello.raw, Sink::Discard);
        }
    }

    /// Whether the next reply is dropped (`CLIENT REPLY OFF`, or `SKIP` once).
    pub(super) fn take_silence(&mut self) -> bool {
        match self.reply_mode {
            super::command::ReplyMode::On => false,
            super::command::ReplyMode::Off => true,
            super::command::ReplyMode::Skip => {
                self.reply_mode = super::command::ReplyMode::On;
                true
            }
        }
    }

    /// Queues a pass-through reply frame the session read itself.
    fn reply_frame(&mut self, frame: Bytes) {
        if !self.take_silence() {
            self.outbox.reply(frame);
        }
    }
}
