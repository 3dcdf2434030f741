//! A local command, parsed once into what it asks for: the commands the sidecar answers itself
//! (connection and pub/sub commands), with their arguments checked the way Redis checks them, and
//! the class of every command it passes through (see [`Forward`] and `session::passthrough`).
//!
//! Pure: no session state, no I/O. What depends on the connection (authentication, subscribed
//! mode, `MULTI`) is decided by the session from the parsed value.

use bytes::Bytes;

use crate::pubsub::Kind;
use crate::resp::{Command, Reply};

/// What a local client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ping(Option<Bytes>),
    Echo(Bytes),
    Hello(Hello),
    /// `AUTH [user] password`; `user` is `None` in the one-argument form.
    Auth {
        user: Option<Bytes>,
        password: Bytes,
    },
    Select(i64),
    Client(Client),
    Info,
    Quit,
    Reset,
    Publish {
        kind: Kind,
        channel: Bytes,
        message: Bytes,
    },
    Subscribe {
        kind: Kind,
        topics: Vec<Bytes>,
    },
    Unsubscribe {
        kind: Kind,
        topics: Vec<Bytes>,
    },
    Pubsub(Pubsub),
    /// A command with no meaning through a per-pod proxy (`MONITOR`, `SHUTDOWN`, ...).
    Unsupported(String),
    /// Anything else goes to the backplane.
    Forward(Forward),
    /// Malformed: answered with this error, as Redis would.
    Invalid(Reply),
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hello {
    /// `Some(3)` or `Some(2)`: other versions are already an error.
    pub proto: Option<i64>,
    pub auth: Option<(Bytes, Bytes)>,
    pub setname: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Client {
    Id,
    GetName,
    SetName(Bytes),
    SetInfo {
        attr: Bytes,
        value: Bytes,
    },
    Info,
    Reply(ReplyMode),
    /// Subcommands that need the backplane's own view of its clients (named, upper case).
    Unavailable(String),
}

/// `CLIENT REPLY ON|OFF|SKIP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyMode {
    On,
    Off,
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pubsub {
    Channels { kind: Kind, pattern: Option<Bytes> },
    NumSub { kind: Kind, channels: Vec<Bytes> },
    NumPat,
    Help,
}

/// How a passed-through command uses its upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// No connection state: any pooled link, pipelined with other clients' commands.
    Pooled,
    /// Blocks its connection until answered (the command table's `blocking` flag, `WAIT`,
    /// `WAITAOF`, `XREAD`/`XREADGROUP` only with `BLOCK`).
    Blocking,
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
}

const UNSUPPORTED: &[&str] = &[
    "monitor", "sync", "psync", "replconf", "shutdown", "failover", "debug",
];

/// Blocking in Redis 7.0's command table (`COMMAND INFO` flag `blocking`), plus `WAIT` (blocks
/// until replicas acknowledge) and 7.2's `WAITAOF`. `XREAD`/`XREADGROUP` are handled apart.
const BLOCKING: &[&str] = &[
    "blpop",
    "brpop",
    "brpoplpush",
    "blmove",
    "blmpop",
    "bzpopmin",
    "bzpopmax",
    "bzmpop",
    "wait",
    "waitaof",
];

impl Request {
    /// Parses `command`, whose lower-cased name (`Command::name`) the caller has already made.
    pub fn parse(command: &Command, name: &str) -> Request {
        let args = &command.args;
        let n = args.len();
        let arity = || Request::Invalid(Reply::wrong_arity(name));
        match name {
            "ping" if n <= 2 => Request::Ping(args.get(1).cloned()),
            "echo" if n == 2 => Request::Echo(args[1].clone()),
            "ping" | "echo" => arity(),
            "hello" => parse_hello(args),
            "auth" => match n {
                1 => arity(),
                2 => Request::Auth {
                    user: None,
                    password: args[1].clone(),
                },
                3 => Request::Auth {
                    user: Some(args[1].clone()),
                    password: args[2].clone(),
                },
                _ => Request::Invalid(Reply::error("ERR syntax error")),
            },
            "select" if n == 2 => match int(&args[1]) {
                Some(db) => Request::Select(db),
                None => {
                    Request::Invalid(Reply::error("ERR value is not an integer or out of range"))
                }
            },
            "select" => arity(),
            "client" => parse_client(args),
            "info" => Request::Info,
            "quit" => Request::Quit,
            "reset" if n == 1 => Request::Reset,
            "reset" => arity(),
            "publish" | "spublish" if n == 3 => Request::Publish {
                kind: if name == "spublish" {
                    Kind::Shard
                } else {
                    Kind::Channel
                },
                channel: args[1].clone(),
                message: args[2].clone(),
            },
            "publish" | "spublish" => arity(),
            "subscribe" | "psubscribe" | "ssubscribe" if n >= 2 => Request::Subscribe {
                kind: kind_of(name),
                topics: args[1..].to_vec(),
            },
            "subscribe" | "psubscribe" | "ssubscribe" => arity(),
            "unsubscribe" | "punsubscribe" | "sunsubscribe" => Request::Unsubscribe {
                kind: kind_of(name),
                topics: args[1..].to_vec(),
            },
            "pubsub" => parse_pubsub(args),
            _ if UNSUPPORTED.contains(&name) => Request::Unsupported(name.to_owned()),
            "multi" => Request::Forward(Forward::Multi),
            "exec" => Request::Forward(Forward::Exec),
            "discard" => Request::Forward(Forward::Discard),
            "watch" => Request::Forward(Forward::Watch),
            "unwatch" => Request::Forward(Forward::Unwatch),
            _ if BLOCKING.contains(&name) => Request::Forward(Forward::Blocking),
            "xread" | "xreadgroup" if has_block_option(args) => Request::Forward(Forward::Blocking),
            _ => Request::Forward(Forward::Pooled),
        }
    }
}

/// Allowed before authentication (Redis's `no-auth` commands the sidecar serves). By name, as
/// Redis checks it before it looks at the arguments.
pub fn allowed_unauthenticated(name: &str) -> bool {
    matches!(name, "auth" | "hello" | "quit" | "reset")
}

/// Allowed in RESP2's subscribed mode, by name.
pub fn allowed_subscribed(name: &str) -> bool {
    matches!(
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
    )
}

/// Commands whose subcommand is part of their name in Redis's error texts (`client|id`).
pub const CONTAINERS: &[&str] = &[
    "client", "pubsub", "config", "object", "memory", "script", "function", "xinfo", "command",
    "cluster", "acl", "latency", "slowlog", "module",
];

/// An integer argument as Redis reads one (`string2ll`: no `+`, no leading zeros, no spaces).
fn int(b: &[u8]) -> Option<i64> {
    crate::resp::parse_int(b)
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

/// `BLOCK` before `STREAMS` (after it, the word is a stream's name).
fn has_block_option(args: &[Bytes]) -> bool {
    for arg in &args[1..] {
        if arg.eq_ignore_ascii_case(b"streams") {
            return false;
        }
        if arg.eq_ignore_ascii_case(b"block") {
            return true;
        }
    }
    false
}

pub fn kind_of(command: &str) -> Kind {
    match command {
        "psubscribe" | "punsubscribe" => Kind::Pattern,
        "ssubscribe" | "sunsubscribe" => Kind::Shard,
        _ => Kind::Channel,
    }
}

fn parse_hello(args: &[Bytes]) -> Request {
    let mut hello = Hello::default();
    if let Some(v) = args.get(1) {
        match int(v) {
            None => {
                return Request::Invalid(Reply::error(
                    "ERR Protocol version is not an integer or out of range",
                ));
            }
            Some(p @ (2 | 3)) => hello.proto = Some(p),
            Some(_) => {
                return Request::Invalid(Reply::error("NOPROTO unsupported protocol version"));
            }
        }
    }
    let mut j = 2;
    while j < args.len() {
        let more = args.len() - 1 - j;
        let opt = lower(&args[j]);
        if opt == "auth" && more >= 2 {
            hello.auth = Some((args[j + 1].clone(), args[j + 2].clone()));
            j += 3;
        } else if opt == "setname" && more >= 1 {
            hello.setname = Some(args[j + 1].clone());
            j += 2;
        } else {
            return Request::Invalid(Reply::error(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&args[j])
            )));
        }
    }
    Request::Hello(hello)
}

fn parse_client(args: &[Bytes]) -> Request {
    let Some(sub) = args.get(1) else {
        return Request::Invalid(Reply::wrong_arity("client"));
    };
    let sub_name = lower(sub);
    let n = args.len();
    let client = match sub_name.as_str() {
        "id" if n == 2 => Client::Id,
        "getname" if n == 2 => Client::GetName,
        "setname" if n == 3 => Client::SetName(args[2].clone()),
        "setinfo" if n == 4 => Client::SetInfo {
            attr: args[2].clone(),
            value: args[3].clone(),
        },
        "info" if n == 2 => Client::Info,
        "reply" if n == 3 => match lower(&args[2]).as_str() {
            "on" => Client::Reply(ReplyMode::On),
            "off" => Client::Reply(ReplyMode::Off),
            "skip" => Client::Reply(ReplyMode::Skip),
            _ => return Request::Invalid(Reply::error("ERR syntax error")),
        },
        "id" | "getname" | "setname" | "setinfo" | "info" | "reply" => {
            return Request::Invalid(Reply::wrong_arity(&format!("client|{sub_name}")));
        }
        // Tracking needs invalidation pushes from the server that owns the keys; accepting it
        // would leave clients waiting for invalidations that never come. The rest act on the
        // backplane's clients, which are the sidecars' links, not the application's.
        "tracking" | "caching" | "getredir" | "trackinginfo" | "list" | "kill" | "pause"
        | "unpause" | "unblock" | "no-evict" | "no-touch" => {
            Client::Unavailable(sub_name.to_ascii_uppercase())
        }
        _ => {
            return Request::Invalid(Reply::error(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(sub)
            )));
        }
    };
    Request::Client(client)
}

fn parse_pubsub(args: &[Bytes]) -> Request {
    let Some(sub) = args.get(1) else {
        return Request::Invalid(Reply::wrong_arity("pubsub"));
    };
    let sub_name = lower(sub);
    let n = args.len();
    let shard = sub_name.starts_with("shard");
    let kind = if shard { Kind::Shard } else { Kind::Channel };
    let pubsub = match sub_name.as_str() {
        "channels" | "shardchannels" if n <= 3 => Pubsub::Channels {
            kind,
            pattern: args.get(2).cloned(),
        },
        "numsub" | "shardnumsub" => Pubsub::NumSub {
            kind,
            channels: args[2..].to_vec(),
        },
        "numpat" if n == 2 => Pubsub::NumPat,
        "help" if n == 2 => Pubsub::Help,
        "numpat" | "help" => {
            return Request::Invalid(Reply::wrong_arity(&format!("pubsub|{sub_name}")));
        }
        "channels" | "shardchannels" => {
            return Request::Invalid(Reply::error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try PUBSUB HELP.",
                String::from_utf8_lossy(sub)
            )));
        }
        _ => {
            return Request::Invalid(Reply::error(format!(
                "ERR unknown subcommand '{}'. Try PUBSUB HELP.",
                String::from_utf8_lossy(sub)
            )));
        }
    };
    Request::Pubsub(pubsub)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Request {
        let command = Command::from_args(
            line.split(' ')
                .map(|a| Bytes::copy_from_slice(a.as_bytes())),
        );
        Request::parse(&command, &command.name())
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn connection_commands() {
        assert_eq!(parse("PING"), Request::Ping(None));
        assert_eq!(parse("ping x"), Request::Ping(Some(b("x"))));
        assert_eq!(
            parse("PING a b"),
            Request::Invalid(Reply::wrong_arity("ping"))
        );
        assert_eq!(parse("EcHo hi"), Request::Echo(b("hi")));
        assert_eq!(
            parse("AUTH pw"),
            Request::Auth {
                user: None,
                password: b("pw")
            }
        );
        assert_eq!(
            parse("AUTH alice pw"),
            Request::Auth {
                user: Some(b("alice")),
                password: b("pw")
            }
        );
        assert_eq!(
            parse("AUTH a b c"),
            Request::Invalid(Reply::error("ERR syntax error"))
        );
        assert_eq!(parse("SELECT 3"), Request::Select(3));
        assert_eq!(
            parse("SELECT x"),
            Request::Invalid(Reply::error("ERR value is not an integer or out of range"))
        );
        // Found by the fuzzer: `SELECT 05` chose database 5, where Redis refuses the number.
        for db in ["05", "+5", " 5", "5 ", "-0"] {
            let command = Command::from_args([b("SELECT"), b(db)]);
            assert_eq!(
                Request::parse(&command, "select"),
                Request::Invalid(Reply::error("ERR value is not an integer or out of range")),
                "{db:?}"
            );
        }
        assert_eq!(parse("SELECT -1"), Request::Select(-1));
        assert_eq!(parse("QUIT"), Request::Quit);
        assert_eq!(
            parse("RESET now"),
            Request::Invalid(Reply::wrong_arity("reset"))
        );
    }

    #[test]
    fn hello_options() {
        assert_eq!(parse("HELLO"), Request::Hello(Hello::default()));
        assert_eq!(
            parse("HELLO 3 AUTH u p SETNAME n"),
            Request::Hello(Hello {
                proto: Some(3),
                auth: Some((b("u"), b("p"))),
                setname: Some(b("n"))
            })
        );
        assert_eq!(
            parse("HELLO 4"),
            Request::Invalid(Reply::error("NOPROTO unsupported protocol version"))
        );
        assert_eq!(
            parse("HELLO x"),
            Request::Invalid(Reply::error(
                "ERR Protocol version is not an integer or out of range"
            ))
        );
        assert_eq!(
            parse("HELLO 03"),
            Request::Invalid(Reply::error(
                "ERR Protocol version is not an integer or out of range"
            ))
        );
        assert_eq!(
            parse("HELLO 3 SETNAME"),
            Request::Invalid(Reply::error("ERR Syntax error in HELLO option 'SETNAME'"))
        );
    }

    #[test]
    fn client_subcommands() {
        assert_eq!(parse("CLIENT ID"), Request::Client(Client::Id));
        assert_eq!(
            parse("client reply Off"),
            Request::Client(Client::Reply(ReplyMode::Off))
        );
        assert_eq!(
            parse("CLIENT REPLY SKIP"),
            Request::Client(Client::Reply(ReplyMode::Skip))
        );
        assert_eq!(
            parse("CLIENT REPLY maybe"),
            Request::Invalid(Reply::error("ERR syntax error"))
        );
        assert_eq!(
            parse("CLIENT REPLY"),
            Request::Invalid(Reply::wrong_arity("client|reply"))
        );
        assert_eq!(
            parse("CLIENT TRACKING on"),
            Request::Client(Client::Unavailable("TRACKING".into()))
        );
        assert_eq!(
            parse("CLIENT FOO"),
            Request::Invalid(Reply::error(
                "ERR unknown subcommand 'FOO'. Try CLIENT HELP."
            ))
        );
    }

    #[test]
    fn pubsub_commands() {
        assert_eq!(
            parse("PUBLISH c m"),
            Request::Publish {
                kind: Kind::Channel,
                channel: b("c"),
                message: b("m")
            }
        );
        assert_eq!(
            parse("SPUBLISH c"),
            Request::Invalid(Reply::wrong_arity("spublish"))
        );
        assert_eq!(
            parse("PSUBSCRIBE a* b*"),
            Request::Subscribe {
                kind: Kind::Pattern,
                topics: vec![b("a*"), b("b*")]
            }
        );
        assert_eq!(
            parse("SUNSUBSCRIBE"),
            Request::Unsubscribe {
                kind: Kind::Shard,
                topics: vec![]
            }
        );
        assert_eq!(
            parse("PUBSUB SHARDNUMSUB a"),
            Request::Pubsub(Pubsub::NumSub {
                kind: Kind::Shard,
                channels: vec![b("a")]
            })
        );
        assert_eq!(
            parse("PUBSUB NUMPAT x"),
            Request::Invalid(Reply::wrong_arity("pubsub|numpat"))
        );
        assert_eq!(kind_of("unsubscribe"), Kind::Channel);
    }

    #[test]
    fn forwarded_classes() {
        for (line, class) in [
            ("GET k", Forward::Pooled),
            ("XREAD COUNT 1 STREAMS s 0", Forward::Pooled),
            ("XREAD COUNT 1 STREAMS block 0", Forward::Pooled),
            ("XREAD BLOCK 0 STREAMS s $", Forward::Blocking),
            (
                "xreadgroup GROUP g c block 10 STREAMS s >",
                Forward::Blocking,
            ),
            ("BLPOP a 0", Forward::Blocking),
            ("bzpopmin z 1", Forward::Blocking),
            ("BLMOVE a b LEFT RIGHT 0", Forward::Blocking),
            ("WAIT 1 0", Forward::Blocking),
            ("MULTI", Forward::Multi),
            ("exec", Forward::Exec),
            ("DISCARD", Forward::Discard),
            ("WATCH a b", Forward::Watch),
            ("UNWATCH", Forward::Unwatch),
        ] {
            assert_eq!(parse(line), Request::Forward(class), "{line}");
        }
        assert_eq!(parse("MONITOR"), Request::Unsupported("monitor".into()));
    }

    #[test]
    fn session_rules() {
        assert!(allowed_unauthenticated("auth"));
        assert!(allowed_unauthenticated("hello"));
        assert!(!allowed_unauthenticated("get"));
        assert!(allowed_subscribed("ping"));
        assert!(allowed_subscribed("punsubscribe"));
        assert!(!allowed_subscribed("publish"));
    }

    proptest::proptest! {
        #[test]
        fn any_arguments_parse(args in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..12), 1..6)) {
            let command = Command::from_args(args);
            let _ = Request::parse(&command, &command.name());
        }
    }
}
