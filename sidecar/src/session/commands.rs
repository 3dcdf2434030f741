//! The commands the sidecar answers itself, with Redis's exact replies and error texts, and the
//! hand-off of everything else to the backplane.

use bytes::Bytes;

use super::{Flow, Session};
use crate::pubsub::Kind;
use crate::resp::{Command, Protocol, Reply};

/// The Redis version the sidecar reports in HELLO and INFO.
pub const REPORTED_REDIS_VERSION: &str = "7.2.0";

/// Commands that make no sense through a per-pod proxy; they get an error that says where to
/// run them instead.
/// Commands whose subcommand is part of their name in Redis's error texts.
const CONTAINERS: &[&str] = &[
    "client", "pubsub", "config", "object", "memory", "script", "function", "xinfo", "command",
    "cluster", "acl", "latency", "slowlog", "module",
];

const UNSUPPORTED: &[&str] = &[
    "monitor", "sync", "psync", "replconf", "shutdown", "failover", "debug",
];

impl Session {
    /// Handles one command; replies go to the outbox.
    pub async fn handle(&mut self, command: Command) -> Flow {
        let name = command.name();
        if let Some(reply) = self.refuse(&name, &command.args) {
            self.reply(reply);
            return Flow::Continue;
        }
        if self.in_multi && !matches!(name.as_str(), "exec" | "discard" | "multi") {
            return self.in_transaction(&name, command).await;
        }
        let args = &command.args;
        let reply = match name.as_str() {
            "ping" => self.ping(args),
            "echo" if args.len() == 2 => Reply::Bulk(args[1].clone()),
            "echo" => Reply::wrong_arity("echo"),
            "hello" => self.hello(args),
            "auth" => self.auth(args),
            "select" => return self.select(command).await,
            "client" => self.client(args),
            "info" => self.info(),
            "quit" => {
                self.reply(Reply::ok());
                return Flow::Close;
            }
            "reset" if args.len() == 1 => self.reset().await,
            "reset" => Reply::wrong_arity("reset"),
            "publish" | "spublish" => {
                if args.len() != 3 {
                    Reply::wrong_arity(&name)
                } else {
                    let kind = if name == "spublish" {
                        Kind::Shard
                    } else {
                        Kind::Channel
                    };
                    let relay = self.ctx.relay.clone();
                    Reply::Integer(relay.publish(kind, args[1].clone(), args[2].clone()).await)
                }
            }
            "subscribe" | "psubscribe" | "ssubscribe" => {
                if args.len() < 2 {
                    Reply::wrong_arity(&name)
                } else {
                    let kind = kind_of(&name);
                    let relay = self.ctx.relay.clone();
                    match relay
                        .subscribe(&self.outbox, &mut self.subs, kind, &args[1..])
                        .await
                    {
                        Ok(()) => return Flow::Continue,
                        Err(e) => e,
                    }
                }
            }
            "unsubscribe" | "punsubscribe" | "sunsubscribe" => {
                let kind = kind_of(&name);
                let relay = self.ctx.relay.clone();
                relay
                    .unsubscribe(&self.outbox, &mut self.subs, kind, args[1..].to_vec())
                    .await;
                return Flow::Continue;
            }
            "pubsub" => self.pubsub(args).await,
            _ if UNSUPPORTED.contains(&name.as_str()) => Reply::error(format!(
                "ERR switchboard: '{name}' is not available through the sidecar; run it against the backplane Redis directly"
            )),
            _ => return self.forward(&name, command).await,
        };
        self.reply(reply);
        Flow::Continue
    }

    pub(super) fn reply(&self, reply: Reply) {
        self.outbox.reply(reply.to_bytes(self.proto));
    }

    /// Authentication, then RESP2's subscribed-mode restriction, in Redis's order.
    fn refuse(&self, name: &str, args: &[Bytes]) -> Option<Reply> {
        if !self.authenticated && !matches!(name, "auth" | "hello" | "quit" | "reset") {
            return Some(Reply::error("NOAUTH Authentication required."));
        }
        let allowed_subscribed = matches!(
            name,
            "subscribe"
                | "ssubscribe"
                | "unsubscribe"
                | "sunsubscribe"
                | "psubscribe"
                | "punsubscribe"
                | "ping"
                | "quit"
                | "reset"
        );
        if self.proto == Protocol::Resp2 && !self.subs.is_empty() && !allowed_subscribed {
            // Redis names container commands with their subcommand (`client|id`).
            let full = match args.get(1) {
                Some(sub) if CONTAINERS.contains(&name) => {
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

    fn ping(&self, args: &[Bytes]) -> Reply {
        if args.len() > 2 {
            return Reply::wrong_arity("ping");
        }
        // RESP2 clients in subscribed mode read only arrays, so Redis answers with one there.
        if self.proto == Protocol::Resp2 && !self.subs.is_empty() {
            let arg = args.get(1).cloned().unwrap_or_default();
            return Reply::Array(vec![Reply::bulk_str("pong"), Reply::Bulk(arg)]);
        }
        match args.get(1) {
            Some(msg) => Reply::Bulk(msg.clone()),
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

    fn auth(&mut self, args: &[Bytes]) -> Reply {
        match args.len() {
            2 if self.ctx.password.is_none() => Reply::error(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            ),
            2 | 3 => {
                let (user, pass) = if args.len() == 2 {
                    (&b"default"[..], &args[1])
                } else {
                    (&args[1][..], &args[2])
                };
                if self.credentials_ok(user, pass) {
                    self.authenticated = true;
                    Reply::ok()
                } else {
                    Reply::error("WRONGPASS invalid username-password pair or user is disabled.")
                }
            }
            1 => Reply::wrong_arity("auth"),
            _ => Reply::error("ERR syntax error"),
        }
    }

    fn hello(&mut self, args: &[Bytes]) -> Reply {
        let mut proto = None;
        if let Some(v) = args.get(1) {
            match std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            {
                None => {
                    return Reply::error("ERR Protocol version is not an integer or out of range");
                }
                Some(2) => proto = Some(Protocol::Resp2),
                Some(3) => proto = Some(Protocol::Resp3),
                Some(_) => return Reply::error("NOPROTO unsupported protocol version"),
            }
        }
        let mut auth = None;
        let mut setname = None;
        let mut j = 2;
        while j < args.len() {
            let more = args.len() - 1 - j;
            let opt = String::from_utf8_lossy(&args[j]).to_ascii_lowercase();
            if opt == "auth" && more >= 2 {
                auth = Some((args[j + 1].clone(), args[j + 2].clone()));
                j += 3;
            } else if opt == "setname" && more >= 1 {
                setname = Some(args[j + 1].clone());
                j += 2;
            } else {
                return Reply::error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&args[j])
                ));
            }
        }
        if let Some((user, pass)) = auth {
            if !self.credentials_ok(&user, &pass) {
                return Reply::error(
                    "WRONGPASS invalid username-password pair or user is disabled.",
                );
            }
            self.authenticated = true;
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
        if proto != self.proto {
            // The pass-through link speaks the client's protocol; reopen it in the new one.
            self.passthrough = None;
        }
        self.proto = proto;
        self.outbox.set_protocol(proto);
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

    async fn select(&mut self, command: Command) -> Flow {
        let args = &command.args;
        if args.len() != 2 {
            self.reply(Reply::wrong_arity("select"));
            return Flow::Continue;
        }
        let Some(db) = std::str::from_utf8(&args[1])
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
        else {
            self.reply(Reply::error("ERR value is not an integer or out of range"));
            return Flow::Continue;
        };
        if self.ctx.upstream.is_none() {
            self.reply(if db == 0 {
                Reply::ok()
            } else {
                Reply::error("ERR DB index is out of range")
            });
            return Flow::Continue;
        }
        if db == 0 && self.passthrough.is_none() {
            self.db = 0;
            self.reply(Reply::ok());
            return Flow::Continue;
        }
        // Only Redis knows how many databases it has: let it decide.
        let flow = self.forward("select", command).await;
        if self.passthrough.is_some() {
            self.db = db;
        }
        flow
    }

    fn client(&mut self, args: &[Bytes]) -> Reply {
        let Some(sub) = args.get(1) else {
            return Reply::wrong_arity("client");
        };
        let sub_name = String::from_utf8_lossy(sub).to_ascii_lowercase();
        let arity = |n: usize| args.len() == n;
        match sub_name.as_str() {
            "id" if arity(2) => Reply::Integer(self.id as i64),
            "getname" if arity(2) => self.name.clone().map_or(Reply::NullBulk, Reply::Bulk),
            "setname" if arity(3) => match self.set_name(args[2].clone()) {
                Ok(()) => Reply::ok(),
                Err(e) => e,
            },
            // As Redis 7.2 does (clients send it and ignore errors from older servers).
            "setinfo" if arity(4) => {
                let attr = String::from_utf8_lossy(&args[2]).to_ascii_lowercase();
                let value = args[3].clone();
                if value.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
                    return Reply::error(format!(
                        "ERR {attr} cannot contain spaces, newlines or special characters."
                    ));
                }
                match attr.as_str() {
                    "lib-name" => self.lib_name = Some(value),
                    "lib-ver" => self.lib_ver = Some(value),
                    _ => {
                        return Reply::error(format!(
                            "ERR Unrecognized option '{}'",
                            String::from_utf8_lossy(&args[2])
                        ));
                    }
                }
                Reply::ok()
            }
            "info" if arity(2) => Reply::bulk(self.client_info()),
            "id" | "getname" | "setname" | "setinfo" | "info" => {
                Reply::wrong_arity(&format!("client|{sub_name}"))
            }
            // Tracking needs invalidation pushes from the server that owns the keys; accepting it
            // would leave clients waiting for invalidations that never come.
            "tracking" | "caching" | "getredir" | "trackinginfo" | "list" | "kill" | "pause"
            | "unpause" | "reply" | "unblock" | "no-evict" | "no-touch" => Reply::error(format!(
                "ERR switchboard: CLIENT {} is not available through the sidecar",
                sub_name.to_ascii_uppercase()
            )),
            _ => Reply::error(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(sub)
            )),
        }
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
            self.db,
            self.subs.count(Kind::Channel),
            self.subs.count(Kind::Shard),
            if self.in_multi { 0 } else { -1 },
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
        self.passthrough = None;
        self.in_multi = false;
        self.name = None;
        self.db = 0;
        self.authenticated = self.ctx.password.is_none();
        Reply::simple("RESET")
    }

    async fn pubsub(&self, args: &[Bytes]) -> Reply {
        let Some(sub) = args.get(1) else {
            return Reply::wrong_arity("pubsub");
        };
        let sub_name = String::from_utf8_lossy(sub).to_ascii_lowercase();
        let relay = &self.ctx.relay;
        match sub_name.as_str() {
            "channels" | "shardchannels" if args.len() <= 3 => {
                let kind = if sub_name == "channels" {
                    Kind::Channel
                } else {
                    Kind::Shard
                };
                let names = relay.channels(kind, args.get(2).map(|p| &p[..])).await;
                Reply::Array(names.into_iter().map(Reply::Bulk).collect())
            }
            "numsub" | "shardnumsub" => {
                let kind = if sub_name == "numsub" {
                    Kind::Channel
                } else {
                    Kind::Shard
                };
                let counts = relay.numsub(kind, &args[2..]).await;
                let mut items = Vec::with_capacity(counts.len() * 2);
                for (channel, n) in args[2..].iter().zip(counts) {
                    items.push(Reply::Bulk(channel.clone()));
                    items.push(Reply::Integer(n));
                }
                Reply::Array(items)
            }
            "numpat" if args.len() == 2 => Reply::Integer(relay.numpat().await),
            "help" if args.len() == 2 => {
                Reply::Array(PUBSUB_HELP.iter().map(|l| Reply::simple(l)).collect())
            }
            "numpat" | "help" => Reply::wrong_arity(&format!("pubsub|{sub_name}")),
            "channels" | "shardchannels" => Reply::error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try PUBSUB HELP.",
                String::from_utf8_lossy(sub)
            )),
            _ => Reply::error(format!(
                "ERR unknown subcommand '{}'. Try PUBSUB HELP.",
                String::from_utf8_lossy(sub)
            )),
        }
    }

    /// Inside MULTI: queue upstream so EXEC runs everything together; channel names still get
    /// the prefix so a queued PUBLISH reaches this cluster's subscribers.
    async fn in_transaction(&mut self, name: &str, command: Command) -> Flow {
        match name {
            "subscribe" | "psubscribe" | "ssubscribe" | "unsubscribe" | "punsubscribe"
            | "sunsubscribe" => {
                self.reply(Reply::error(format!(
                    "ERR switchboard: {} inside MULTI is not supported",
                    name.to_ascii_uppercase()
                )));
                Flow::Continue
            }
            "publish" | "spublish"
                if command.args.len() == 3 && !self.ctx.channel_prefix.is_empty() =>
            {
                let mut channel = self.ctx.channel_prefix.to_vec();
                channel.extend_from_slice(&command.args[1]);
                let rewritten = Command::from_args([
                    command.args[0].clone(),
                    channel.into(),
                    command.args[2].clone(),
                ]);
                self.forward(name, rewritten).await
            }
            _ => self.forward(name, command).await,
        }
    }

    /// Passes a command to the backplane on this connection's own link and relays the reply
    /// byte for byte.
    async fn forward(&mut self, name: &str, command: Command) -> Flow {
        let Some(endpoint) = self.ctx.upstream.clone() else {
            self.reply(Reply::error(format!(
                "ERR switchboard: '{name}' needs a backplane, and this sidecar runs embedded (no --upstream): only connection and pub/sub commands are served"
            )));
            return Flow::Continue;
        };
        if self.passthrough.is_none() {
            match endpoint.connect(self.proto, None).await {
                Ok(mut link) => {
                    if self.db != 0 {
                        let select = crate::upstream::command(&["SELECT", &self.db.to_string()]);
                        if let Err(e) = link.call(&select.raw).await {
                            self.reply(Reply::error(format!(
                                "ERR switchboard: backplane unreachable, command not run: {e}"
                            )));
                            return Flow::Continue;
                        }
                    }
                    self.passthrough = Some(link);
                }
                Err(e) => {
                    self.reply(Reply::error(format!(
                        "ERR switchboard: backplane unreachable, command not run: {e}"
                    )));
                    return Flow::Continue;
                }
            }
        }
        let link = self.passthrough.as_mut().expect("opened above");
        self.ctx.metrics.commands_forwarded.inc();
        match link.forward(&command.raw).await {
            Ok(reply) => {
                let failed = reply.first() == Some(&b'-');
                match name {
                    "multi" if !failed => self.in_multi = true,
                    "exec" | "discard" => self.in_multi = false,
                    _ => {}
                }
                self.outbox.reply(reply);
            }
            Err(e) => {
                // The command may or may not have run; say so rather than guess.
                self.passthrough = None;
                self.in_multi = false;
                self.reply(Reply::error(format!(
                    "ERR switchboard: lost the backplane connection while running '{name}'; it may or may not have run: {e}"
                )));
            }
        }
        Flow::Continue
    }
}

fn kind_of(command: &str) -> Kind {
    match command {
        "psubscribe" | "punsubscribe" => Kind::Pattern,
        "ssubscribe" | "sunsubscribe" => Kind::Shard,
        _ => Kind::Channel,
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

#[cfg(test)]
mod tests {
    use super::kind_of;
    use crate::pubsub::Kind;

    #[test]
    fn command_kinds() {
        assert_eq!(kind_of("subscribe"), Kind::Channel);
        assert_eq!(kind_of("unsubscribe"), Kind::Channel);
        assert_eq!(kind_of("psubscribe"), Kind::Pattern);
        assert_eq!(kind_of("punsubscribe"), Kind::Pattern);
        assert_eq!(kind_of("ssubscribe"), Kind::Shard);
        assert_eq!(kind_of("sunsubscribe"), Kind::Shard);
    }
}
