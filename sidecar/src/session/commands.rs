//! The commands the sidecar answers itself, with Redis's exact replies and error texts, and the
//! hand-off of everything else to the backplane (see `passthrough`).

use bytes::Bytes;

use super::command::{self, Client, Hello, Pubsub, ReplyMode, Request};
use super::{Flow, Session};
use crate::pubsub::Kind;
use crate::resp::{Command, Protocol, Reply};

/// The Redis version the sidecar reports in HELLO and INFO.
pub const REPORTED_REDIS_VERSION: &str = "7.2.0";

impl Session {
    /// Handles one command; replies go to the outbox.
    pub async fn handle(&mut self, command: Command) -> Flow {
        let name = command.name();
        let request = Request::parse(&command, &name);
        if let Some(reply) = self.refuse(&name, &command.args) {
            return self.local_reply(reply).await;
        }
        if self.pass.in_multi && !matches!(name.as_str(), "exec" | "discard" | "multi") {
            return self.in_transaction(request, command).await;
        }
        if let Request::Forward(class) = request {
            return self.forward(class, command).await;
        }
        // Everything below is answered here: after the replies this client still awaits.
        if self.settle().await.is_err() {
            return Flow::Close;
        }
        let reply = match request {
            Request::Ping(msg) => self.ping(msg),
            Request::Echo(msg) => Reply::Bulk(msg),
            Request::Hello(mut hello) => {
                if let Some((user, password)) = hello.auth.clone()
                    && user[..] != b"default"[..]
                    && self.ctx.routes.is_some()
                {
                    match self.hello_auth_upstream(user, password).await {
                        Ok(true) => hello.auth = None,
                        Ok(false) => return Flow::Continue,
                        Err(_) => return Flow::Close,
                    }
                }
                self.hello(hello)
            }
            Request::Auth { user, password } => match user {
                Some(user) if user[..] != b"default"[..] && self.ctx.routes.is_some() => {
                    return self.auth_upstream(user, password, command.raw).await;
                }
                _ => self.auth(user, password),
            },
            Request::Select(db) => return self.select(db, command.raw).await,
            Request::Client(client) => match self.client(client) {
                Some(reply) => reply,
                None => return Flow::Continue,
            },
            Request::Info => self.info(),
            Request::Quit => {
                self.reply(Reply::ok());
                return Flow::Close;
            }
            Request::Reset => self.reset().await,
            Request::Publish {
                kind,
                channel,
                message,
            } => {
                let relay = self.ctx.relay.clone();
                Reply::Integer(relay.publish(kind, channel, message).await)
            }
            Request::Subscribe { kind, topics } => {
                let relay = self.ctx.relay.clone();
                match relay
                    .subscribe(&self.outbox, &mut self.subs, kind, &topics)
                    .await
                {
                    Ok(()) => return Flow::Continue,
                    Err(e) => e,
                }
            }
            Request::Unsubscribe { kind, topics } => {
                let relay = self.ctx.relay.clone();
                relay
                    .unsubscribe(&self.outbox, &mut self.subs, kind, topics)
                    .await;
                return Flow::Continue;
            }
            Request::Pubsub(pubsub) => self.pubsub(pubsub).await,
            Request::Unsupported(name) => Reply::error(format!(
                "ERR switchboard: '{name}' is not available through the sidecar; run it against the backplane Redis directly"
            )),
            Request::Invalid(reply) => reply,
            Request::Forward(_) => unreachable!("forwarded above"),
        };
        self.reply(reply);
        Flow::Continue
    }

    /// A reply the sidecar makes before looking further, after what the client still awaits.
    async fn local_reply(&mut self, reply: Reply) -> Flow {
        if self.settle().await.is_err() {
            return Flow::Close;
        }
        self.reply(reply);
        Flow::Continue
    }

    pub(super) fn reply(&mut self, reply: Reply) {
        if !self.take_silence() {
            self.outbox.reply(reply.to_bytes(self.proto));
        }
    }

    /// Authentication, then RESP2's subscribed-mode restriction, in Redis's order.
    fn refuse(&self, name: &str, args: &[Bytes]) -> Option<Reply> {
        if !self.authenticated && !command::allowed_unauthenticated(name) {
            return Some(Reply::error("NOAUTH Authentication required."));
        }
        if self.proto == Protocol::Resp2
            && !self.subs.is_empty()
            && !command::allowed_subscribed(name)
        {
            // Redis names container commands with their subcommand (`client|id`).
            let full = match args.get(1) {
                Some(sub) if command::CONTAINERS.contains(&name) => {
                    format!(
                        "{name}|{}",
                        String::from_utf8_lossy(sub).to_ascii_lowercase()
                    )
                }
                _ => name.to_owned(),
            };
            return Some(Reply::error(format!(
                "ERR Can't execute '{full}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            )));
        }
        None
    }

    fn ping(&self, msg: Option<Bytes>) -> Reply {
        // RESP2 clients in subscribed mode read only arrays, so Redis answers with one there.
        if self.proto == Protocol::Resp2 && !self.subs.is_empty() {
            let arg = msg.unwrap_or_default();
            return Reply::Array(vec![Reply::bulk_str("pong"), Reply::Bulk(arg)]);
        }
        match msg {
            Some(msg) => Reply::Bulk(msg),
            None => Reply::simple("PONG"),
        }
    }

    /// Checks credentials the way Redis's default user does: with no password configured any
    /// password is accepted for `default` (two-argument forms), nothing else exists.
    fn credentials_ok(&self, user: &[u8], pass: &[u8]) -> bool {
        user == b"default"
            && self
                .ctx
                .password
                .as_deref()
                .is_none_or(|p| p.as_bytes() == pass)
    }

    fn auth(&mut self, user: Option<Bytes>, password: Bytes) -> Reply {
        if user.is_none() && self.ctx.password.is_none() {
            return Reply::error(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            );
        }
        let user = user.unwrap_or_else(|| Bytes::from_static(b"default"));
        if self.credentials_ok(&user, &password) {
            self.authenticated = true;
            self.drop_upstream_user();
            Reply::ok()
        } else {
            Reply::error("WRONGPASS invalid username-password pair or user is disabled.")
        }
    }

    fn hello(&mut self, hello: Hello) -> Reply {
        let Hello {
            proto,
            auth,
            setname,
        } = hello;
        let proto = proto.map(|v| {
            if v == 3 {
                Protocol::Resp3
            } else {
                Protocol::Resp2
            }
        });
        if let Some((user, pass)) = auth {
            if !self.credentials_ok(&user, &pass) {
                return Reply::error(
                    "WRONGPASS invalid username-password pair or user is disabled.",
                );
            }
            self.authenticated = true;
            self.drop_upstream_user();
        }
        if !self.authenticated {
            return Reply::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
        if let Some(name) = setname
            && let Err(e) = self.set_name(name)
        {
            return e;
        }
        if let Some(p) = proto {
            self.set_protocol(p);
        }
        Reply::Map(vec![
            (Reply::bulk_str("server"), Reply::bulk_str("redis")),
            (
                Reply::bulk_str("version"),
                Reply::bulk_str(REPORTED_REDIS_VERSION),
            ),
            (
                Reply::bulk_str("proto"),
                Reply::Integer(self.proto.version()),
            ),
            (Reply::bulk_str("id"), Reply::Integer(self.id as i64)),
            (Reply::bulk_str("mode"), Reply::bulk_str("standalone")),
            (Reply::bulk_str("role"), Reply::bulk_str("master")),
            (Reply::bulk_str("modules"), Reply::Array(vec![])),
        ])
    }

    fn set_protocol(&mut self, proto: Protocol) {
        let changed = proto != self.proto;
        self.proto = proto;
        self.outbox.set_protocol(proto);
        if changed {
            // Pass-through links speak the client's protocol.
            self.protocol_changed();
        }
    }

    fn set_name(&mut self, name: Bytes) -> Result<(), Reply> {
        if name.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
            return Err(Reply::error(
                "ERR Client names cannot contain spaces, newlines or special characters.",
            ));
        }
        self.name = (!name.is_empty()).then_some(name);
        Ok(())
    }

    async fn select(&mut self, db: i64, raw: Bytes) -> Flow {
        if self.ctx.routes.is_none() {
            self.reply(if db == 0 {
                Reply::ok()
            } else {
                Reply::error("ERR DB index is out of range")
            });
            return Flow::Continue;
        }
        // Only Redis knows how many databases it has: let it decide.
        self.select_upstream(db, raw).await
    }

    /// `None`: no reply (`CLIENT REPLY OFF|SKIP`).
    fn client(&mut self, client: Client) -> Option<Reply> {
        Some(match client {
            Client::Id => Reply::Integer(self.id as i64),
            Client::GetName => self.name.clone().map_or(Reply::NullBulk, Reply::Bulk),
            Client::SetName(name) => match self.set_name(name) {
                Ok(()) => Reply::ok(),
                Err(e) => e,
            },
            // As Redis 7.2 does (clients send it and ignore errors from older servers).
            Client::SetInfo { attr, value } => {
                let attr_name = String::from_utf8_lossy(&attr).to_ascii_lowercase();
                if value.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
                    return Some(Reply::error(format!(
                        "ERR {attr_name} cannot contain spaces, newlines or special characters."
                    )));
                }
                match attr_name.as_str() {
                    "lib-name" => self.lib_name = Some(value),
                    "lib-ver" => self.lib_ver = Some(value),
                    _ => {
                        return Some(Reply::error(format!(
                            "ERR Unrecognized option '{}'",
                            String::from_utf8_lossy(&attr)
                        )));
                    }
                }
                Reply::ok()
            }
            Client::Info => Reply::bulk(self.client_info()),
            Client::Reply(mode) => {
                self.reply_mode = mode;
                return (mode == ReplyMode::On).then(Reply::ok);
            }
            Client::Unavailable(sub) => Reply::error(format!(
                "ERR switchboard: CLIENT {sub} is not available through the sidecar"
            )),
        })
    }

    fn client_info(&self) -> String {
        let s = |b: &Option<Bytes>| {
            b.as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        format!(
            "id={} name={} db={} sub={} ssub={} multi={} resp={} lib-name={} lib-ver={}\n",
            self.id,
            s(&self.name),
            self.pass.db,
            self.subs.count(Kind::Channel),
            self.subs.count(Kind::Shard),
            if self.pass.in_multi { 0 } else { -1 },
            self.proto.version(),
            s(&self.lib_name),
            s(&self.lib_ver),
        )
    }

    /// Answered locally so a client's ready check (ioredis sends INFO and waits for
    /// `loading:0`) passes even while the backplane is briefly unreachable.
    fn info(&self) -> Reply {
        let mode = if self.ctx.relay.is_embedded() {
            "embedded"
        } else {
            "relay"
        };
        Reply::bulk(format!(
            "# Server\r\nredis_version:{REPORTED_REDIS_VERSION}\r\nredis_mode:standalone\r\nswitchboard_version:{}\r\nswitchboard_mode:{mode}\r\n\r\n# Persistence\r\nloading:0\r\n\r\n# Replication\r\nrole:master\r\n",
            env!("CARGO_PKG_VERSION")
        ))
    }

    async fn reset(&mut self) -> Reply {
        let relay = self.ctx.relay.clone();
        relay.leave_all(&self.outbox, &mut self.subs).await;
        self.set_protocol(Protocol::Resp2);
        self.pass.reset();
        self.reply_mode = ReplyMode::On;
        self.name = None;
        self.authenticated = self.ctx.password.is_none();
        Reply::simple("RESET")
    }

    async fn pubsub(&self, pubsub: Pubsub) -> Reply {
        let relay = &self.ctx.relay;
        match pubsub {
            Pubsub::Channels { kind, pattern } => {
                let names = relay.channels(kind, pattern.as_deref()).await;
                Reply::Array(names.into_iter().map(Reply::Bulk).collect())
            }
            Pubsub::NumSub { kind, channels } => {
                let counts = relay.numsub(kind, &channels).await;
                let mut items = Vec::with_capacity(counts.len() * 2);
                for (channel, n) in channels.into_iter().zip(counts) {
                    items.push(Reply::Bulk(channel));
                    items.push(Reply::Integer(n));
                }
                Reply::Array(items)
            }
            Pubsub::NumPat => Reply::Integer(relay.numpat().await),
            Pubsub::Help => Reply::Array(PUBSUB_HELP.iter().map(|l| Reply::simple(l)).collect()),
        }
    }

    /// Inside MULTI: queue upstream so EXEC runs everything together; channel names still get
    /// the prefix so a queued PUBLISH reaches this cluster's subscribers.
    async fn in_transaction(&mut self, request: Request, command: Command) -> Flow {
        if self.pass.multi_deferred {
            match self.open_deferred_multi(&command).await {
                Ok(true) => {}
                Ok(false) => return Flow::Continue,
                Err(_) => return Flow::Close,
            }
        }
        match request {
            Request::Subscribe { .. } | Request::Unsubscribe { .. } => {
                let name = command.name().to_ascii_uppercase();
                self.local_reply(Reply::error(format!(
                    "ERR switchboard: {name} inside MULTI is not supported"
                )))
                .await
            }
            Request::Publish { channel, .. } if !self.ctx.channel_prefix.is_empty() => {
                let mut prefixed = self.ctx.channel_prefix.to_vec();
                prefixed.extend_from_slice(&channel);
                let rewritten = Command::from_args([
                    command.args[0].clone(),
                    prefixed.into(),
                    command.args[2].clone(),
                ]);
                self.queue_in_transaction(rewritten.raw, false).await
            }
            // These change the link's state when EXEC runs them.
            Request::Select(_)
            | Request::Auth { .. }
            | Request::Hello(_)
            | Request::Reset
            | Request::Client(_) => self.queue_in_transaction(command.raw, true).await,
            _ => self.queue_in_transaction(command.raw, false).await,
        }
    }
}

const PUBSUB_HELP: &[&str] = &[
    "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CHANNELS [<pattern>]",
    "    Return the currently active channels matching a <pattern> (default: '*').",
    "NUMPAT",
    "    Return number of subscriptions to patterns.",
    "NUMSUB [<channel> ...]",
    "    Return the number of subscribers for the specified channels, excluding",
    "    pattern subscriptions(default: no channels).",
    "SHARDCHANNELS [<pattern>]",
    "    Return the currently active shard level channels matching a <pattern> (default: '*').",
    "SHARDNUMSUB [<shardchannel> ...]",
    "    Return the number of subscribers for the specified shard level channel(s)",
    "HELP",
    "    Prints this help.",
];
