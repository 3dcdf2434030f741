//! Where a backplane shard is: parsed from its URL, with the credentials to use, and safe to log.
//!
//! Two schemes: `redis://[user[:password]@]host:port[/db]`, one server; and
//! `redis+sentinel://[user[:password]@]host1:port1,host2:port2/<master>[/<db>]`, a primary found
//! by asking the Sentinels (see `sentinel`); and `redis+cluster://[user[:password]@]host1:port1,...`,
//! a Redis Cluster found through those seed nodes (see `cluster`). Each has a TLS form,
//! `rediss://`, `rediss+sentinel://` (TLS to the Sentinels and to the primary) and
//! `rediss+cluster://` (see `tls`). A password given with `--upstream-password` replaces the
//! URL's, so URLs in ConfigMaps can carry none.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use redis::{ConnectionAddr, IntoConnectionInfo};

use super::tls::Tls;

/// The port Sentinels listen on when a `redis+sentinel://` URL names none.
pub const SENTINEL_PORT: u16 = 26379;

/// The port of a cluster seed a `redis+cluster://` URL names without one.
pub const REDIS_PORT: u16 = 6379;

#[derive(Debug, thiserror::Error)]
#[error("invalid upstream URL {url:?}: {reason}")]
pub struct EndpointError {
    url: String,
    reason: String,
}

/// A `host:port` to open a TCP connection to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// How to find the server.
#[derive(Clone)]
pub enum Target {
    /// One server at a fixed address.
    Direct(Addr),
    /// Whatever the Sentinels say is the primary of `master`, asked in turn.
    Sentinel {
        sentinels: Vec<Addr>,
        master: String,
        /// The Sentinel that answered last, asked first next time (shared by clones, so a dead
        /// Sentinel costs one timeout, not one per connection).
        preferred: Arc<AtomicUsize>,
    },
    /// A Redis Cluster known by its seed nodes. A shard of it is the primary serving the first
    /// slot the slot map gives the shard, asked of the seeds on every connect (so it follows
    /// failovers and reshardings); the URL itself (the whole cluster) has no shard.
    Cluster {
        seeds: Vec<Addr>,
        shard: Option<(usize, Arc<super::cluster::SlotMap>)>,
        /// The seed that answered last, asked first next time (shared by clones).
        preferred: Arc<AtomicUsize>,
    },
}

/// A backplane shard: where it is and how to log in. `Display` and `Debug` never show the
/// password.
#[derive(Clone)]
pub struct Endpoint {
    pub target: Target,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
    /// The URL asks for TLS (`rediss://`, `rediss+sentinel://`).
    pub secure: bool,
    /// The TLS client settings, given with [`Endpoint::with_tls`] (`None` until then).
    pub tls: Option<Tls>,
}

impl fmt::Display for Endpoint {
    /// The URL without credentials: safe to log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.secure { "s" } else { "" };
        match &self.target {
            Target::Direct(addr) => {
                write!(f, "redis{s}://{addr}")?;
                if self.db != 0 {
                    write!(f, "/{}", self.db)?;
                }
            }
            Target::Sentinel {
                sentinels, master, ..
            } => {
                let hosts: Vec<String> = sentinels.iter().map(Addr::to_string).collect();
                write!(f, "redis{s}+sentinel://{}/{master}", hosts.join(","))?;
                if self.db != 0 {
                    write!(f, "/{}", self.db)?;
                }
            }
            Target::Cluster { seeds, shard, .. } => {
                let hosts: Vec<String> = seeds.iter().map(Addr::to_string).collect();
                write!(f, "redis{s}+cluster://{}", hosts.join(","))?;
                if let Some((shard, _)) = shard {
                    write!(f, " (shard {shard})")?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let fail = |reason: &str| EndpointError {
            url: redact(url),
            reason: reason.to_owned(),
        };
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            return parse_sentinel(rest, false).map_err(|reason| fail(&reason));
        }
        if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            return parse_sentinel(rest, true).map_err(|reason| fail(&reason));
        }
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            return parse_cluster(rest, false).map_err(|reason| fail(&reason));
        }
        if let Some(rest) = url.strip_prefix("rediss+cluster://") {
            return parse_cluster(rest, true).map_err(|reason| fail(&reason));
        }
        // The redis crate parses the rest of the URL; TLS is ours (it is built without its own).
        let (plain, secure) = match url.strip_prefix("rediss://") {
            Some(rest) => (format!("redis://{rest}"), true),
            None if url.starts_with("redis://") => (url.to_owned(), false),
            None => {
                return Err(fail(
                    "expected redis://, rediss:// (TLS), redis+sentinel://, rediss+sentinel:// (TLS), redis+cluster:// or rediss+cluster:// (TLS)",
                ));
            }
        };
        let info = plain
            .as_str()
            .into_connection_info()
            .map_err(|e| fail(&e.to_string()))?;
        let (host, port) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            _ => {
                return Err(fail(
                    "expected redis://host:port or redis+sentinel://host:port,.../<master>",
                ));
            }
        };
        let settings = info.redis_settings();
        Ok(Endpoint {
            target: Target::Direct(Addr { host, port }),
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
            db: settings.db(),
            secure,
            tls: None,
        })
    }

    /// Gives a TLS endpoint its client settings (plain endpoints ignore them).
    pub fn with_tls(mut self, tls: Option<&Tls>) -> Self {
        if self.secure {
            self.tls = tls.cloned();
        }
        self
    }

    /// Replaces the URL's password (`--upstream-password`), if one is given.
    pub fn with_password(mut self, password: Option<&str>) -> Self {
        if let Some(p) = password {
            self.password = Some(p.to_owned());
        }
        self
    }

    pub fn is_sentinel(&self) -> bool {
        matches!(self.target, Target::Sentinel { .. })
    }

    /// A Redis Cluster (or one shard of it).
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// Behind Sentinel or in a cluster, a server can stop being the primary while our links
    /// stay open: its role is checked on connect and on every heartbeat.
    pub fn checks_role(&self) -> bool {
        self.is_sentinel() || self.is_cluster()
    }

    /// Shard `index` of this cluster, as `map` assigns slots to shards.
    pub fn cluster_shard(&self, index: usize, map: &Arc<super::cluster::SlotMap>) -> Self {
        let mut shard = self.clone();
        if let Target::Cluster { shard: s, .. } = &mut shard.target {
            *s = Some((index, map.clone()));
        }
        shard
    }
}

/// `[user[:password]@]host[:port],host[:port][/]`, after the scheme.
fn parse_cluster(rest: &str, secure: bool) -> Result<Endpoint, String> {
    let (username, password, rest) = parse_userinfo(rest)?;
    let hosts = rest.strip_suffix('/').unwrap_or(rest);
    if hosts.contains('/') {
        return Err(
            "a cluster has only database 0: write redis+cluster://host:port,host:port".into(),
        );
    }
    let seeds = hosts
        .split(',')
        .map(|h| parse_addr(h, REDIS_PORT))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Endpoint {
        target: Target::Cluster {
            seeds,
            shard: None,
            preferred: Arc::new(AtomicUsize::new(0)),
        },
        username,
        password,
        db: 0,
        secure,
        tls: None,
    })
}

type Userinfo<'a> = (Option<String>, Option<String>, &'a str);

/// Splits `[user[:password]@]` off the rest of the URL, decoded.
fn parse_userinfo(rest: &str) -> Result<Userinfo<'_>, String> {
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => {
            let (user, pass) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            let user = percent_decode(user)?;
            let pass = pass.map(percent_decode).transpose()?;
            ((!user.is_empty()).then_some(user), pass)
        }
    };
    Ok((username, password, rest))
}

/// `[user[:password]@]host[:port],host[:port]/<master>[/<db>]`, after the scheme.
fn parse_sentinel(rest: &str, secure: bool) -> Result<Endpoint, String> {
    let (username, password, rest) = parse_userinfo(rest)?;
    let (hosts, path) = rest
        .split_once('/')
        .ok_or("name the master after the Sentinels: redis+sentinel://host:26379,.../<master>")?;
    let sentinels = hosts
        .split(',')
        .map(|h| parse_addr(h, SENTINEL_PORT))
        .collect::<Result<Vec<_>, _>>()?;
    let mut segments = path.split('/');
    let master = segments.next().unwrap_or_default();
    if master.is_empty() {
        return Err(
            "name the master after the Sentinels: redis+sentinel://host:26379,.../<master>".into(),
        );
    }
    let db =
        match segments.next() {
            None | Some("") => 0,
            Some(db) => db.parse::<i64>().ok().filter(|d| *d >= 0).ok_or_else(|| {
                format!("the database after the master must be a number, not {db:?}")
            })?,
        };
    if segments.next().is_some() {
        return Err("expected at most /<master>/<db> after the Sentinels".into());
    }
    Ok(Endpoint {
        target: Target::Sentinel {
            sentinels,
            master: percent_decode(master)?,
            preferred: Arc::new(AtomicUsize::new(0)),
        },
        username,
        password,
        db,
        secure,
        tls: None,
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; the port defaults to `default_port`.
fn parse_addr(s: &str, default_port: u16) -> Result<Addr, String> {
    let bad = || format!("{s:?} is not a host:port");
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        (host, after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        None => default_port,
        Some(p) => p.parse().map_err(|_| bad())?,
    };
    Ok(Addr {
        host: host.to_owned(),
        port,
    })
}

fn percent_decode(s: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex: Vec<u8> = bytes.by_ref().take(2).collect();
            let v = std::str::from_utf8(&hex)
                .ok()
                .filter(|h| h.len() == 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad %-escape in the URL's user or password")?;
            out.push(v);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).map_err(|_| "the URL's user or password is not UTF-8".into())
}

/// Hides the password in a URL for error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_urls_and_never_shows_the_password() {
        let e = Endpoint::parse("redis://:s3cret@backplane.apps.svc:6380/2").unwrap();
        assert_eq!(e.to_string(), "redis://backplane.apps.svc:6380/2");
        assert_eq!(e.password.as_deref(), Some("s3cret"));
        assert!(!format!("{e:?}").contains("s3cret"));
        let err = Endpoint::parse("http://user:s3cret@x")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(err.contains("rediss:// (TLS)"), "{err}");
        // TLS forms: the scheme is kept (and shown), the password never.
        let e = Endpoint::parse("rediss://app:s3cret@cache.example:6380/1").unwrap();
        assert!(e.secure);
        assert_eq!(e.to_string(), "rediss://cache.example:6380/1");
        assert_eq!(e.username.as_deref(), Some("app"));
        assert_eq!(e.password.as_deref(), Some("s3cret"));
        let s = Endpoint::parse("rediss+sentinel://:s3cret@s1:26380,s2/m").unwrap();
        assert!(s.secure && s.is_sentinel());
        assert_eq!(s.to_string(), "rediss+sentinel://s1:26380,s2:26379/m");
        assert!(!Endpoint::parse("redis://h:6379").unwrap().secure);
    }

    #[test]
    fn the_upstream_password_overrides_the_urls() {
        let e = Endpoint::parse("redis://app:fromurl@h:6379")
            .unwrap()
            .with_password(Some("fromsecret"));
        assert_eq!(e.password.as_deref(), Some("fromsecret"));
        assert_eq!(e.username.as_deref(), Some("app"));
        let kept = Endpoint::parse("redis://:fromurl@h:6379")
            .unwrap()
            .with_password(None);
        assert_eq!(kept.password.as_deref(), Some("fromurl"));
        let e = Endpoint::parse("redis+sentinel://h1,h2:1/m")
            .unwrap()
            .with_password(Some("pw"));
        assert_eq!(e.password.as_deref(), Some("pw"));
        assert!(!e.to_string().contains("pw"));
    }

    #[test]
    fn parses_cluster_urls() {
        let e =
            Endpoint::parse("rediss+cluster://app:s%3Fcret@n1.cache:7000,n2,[::1]:7002/").unwrap();
        assert!(e.secure && e.is_cluster() && e.checks_role());
        assert_eq!(
            e.to_string(),
            "rediss+cluster://n1.cache:7000,n2:6379,[::1]:7002"
        );
        assert_eq!(e.password.as_deref(), Some("s?cret"));
        assert_eq!(
            e.cluster_shard(
                1,
                &Arc::new(super::super::cluster::SlotMap::new(vec![0; 16384].into()))
            )
            .to_string(),
            "rediss+cluster://n1.cache:7000,n2:6379,[::1]:7002 (shard 1)"
        );
        for bad in [
            "redis+cluster://h1:7000/1",
            "redis+cluster://h1:x",
            "redis+cluster://:s3cret@h1,,h2",
        ] {
            let err = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("s3cret"), "{err}");
            assert!(err.contains("invalid upstream URL"), "{bad}: {err}");
        }
    }

    #[test]
    fn parses_sentinel_urls() {
        let e = Endpoint::parse(
            "redis+sentinel://u:p%40ss@s1.apps.svc:26380,s2,[::1]:5000/chat-redis/3",
        )
        .unwrap();
        assert_eq!(
            e.to_string(),
            "redis+sentinel://s1.apps.svc:26380,s2:26379,[::1]:5000/chat-redis/3"
        );
        assert_eq!(e.username.as_deref(), Some("u"));
        assert_eq!(e.password.as_deref(), Some("p@ss"));
        assert_eq!(e.db, 3);
        let Target::Sentinel {
            sentinels, master, ..
        } = &e.target
        else {
            panic!("not a Sentinel target")
        };
        assert_eq!(master, "chat-redis");
        assert_eq!(
            sentinels[2],
            Addr {
                host: "::1".into(),
                port: 5000
            }
        );
        for bad in [
            "redis+sentinel://h1:26379,h2:26379",
            "redis+sentinel://h1:26379/",
            "redis+sentinel://h1:x/m",
            "redis+sentinel://h1,,h2/m",
            "redis+sentinel://h1/m/notadb",
            "redis+sentinel://:s3cret@h1/m/1/2",
        ] {
            let err = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(!err.contains("s3cret"), "{err}");
            assert!(err.contains("invalid upstream URL"), "{bad}: {err}");
        }
    }
}
