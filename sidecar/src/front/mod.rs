//! The HTTP front (preview): the pod's HTTP port, in front of the app, that sends each
//! Engine.IO session's requests to the pod that owns the session, so a plain round-robin load
//! balancer works without sticky sessions.
//!
//! Every request goes to the app on loopback (`--front-app`) except those of the Engine.IO
//! path (`--front-path`) that name a session (`sid=`) another pod owns: those go to that pod's
//! front, which passes them to its app. A polling handshake's answer opens a session; its
//! owner records it in the backplane before the answer leaves (see `sessions`). WebSocket
//! upgrades are passed through byte for byte, after the same routing. A session nobody
//! records reaches the local app, which answers it as it answers any unknown session (400).
//!
//! Forwarded requests carry the fleet's secret in [`FORWARDED`]; a front passes a request that
//! carries the header to its own app only, and refuses one whose secret is wrong (403), so
//! nobody outside the fleet can steer a request into a session. With a peer port
//! (`--front-peer-listen`) forwarded requests arrive there and only there: the public port
//! refuses any request that claims to be forwarded, the peer port any that does not (see
//! [`Door`]), so a NetworkPolicy can keep everyone but the fleet's pods off the peer port.
//! A WebSocket-first handshake (no polling) needs no record: its one connection stays on the
//! pod that answered it.
//!
//! An app that runs several worker processes, one port each (`--front-app a,b,…`), gets the
//! handshakes in turn, and every request of a session goes to the worker that opened it: the
//! multi-worker pod that python-socketio and Flask-SocketIO otherwise need sticky sessions
//! for even within one pod. Requests outside sessions take the workers in turn too.

mod engine;
mod sessions;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use self::sessions::{Directory, Owner};
use crate::metrics::Metrics;
use crate::upstream::routing::Routes;

/// The header a forwarded request carries: the fleet's secret.
pub const FORWARDED: HeaderName = HeaderName::from_static("x-switchboard-forwarded");

/// The largest handshake answer read (an Engine.IO open packet is about 120 bytes).
const MAX_HANDSHAKE: usize = 64 * 1024;

/// Most HTTP connections the front holds at once; beyond it new ones wait in the backlog.
const MAX_CONNECTIONS: usize = 16_384;

/// The largest request head read (hyper answers 431 beyond it): cookies and all, a socket.io
/// request's head is a few KiB.
const MAX_HEAD: usize = 64 * 1024;

/// How long a client may take to send a request's head (slow-header floods are cut off).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

type Body = BoxBody<Bytes, hyper::Error>;

/// The front's settings, from `--front-*` and `--session-ttl-ms`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// The port for other fronts' forwarded requests alone (none: `listen` takes them too).
    pub peer_listen: Option<SocketAddr>,
    /// The app's workers (one, usually), on loopback.
    pub app: Vec<SocketAddr>,
    pub advertise: SocketAddr,
    pub path: String,
    /// The fleet's secret (none when embedded: nothing is forwarded).
    pub secret: Option<HeaderValue>,
    pub ttl: Duration,
    pub max_sessions: usize,
    /// At shutdown, how long requests in flight (other pods' long-polls passing through) may
    /// take to finish before they are cut.
    pub drain: Duration,
}

/// Reads the fleet's secret from `path` (`--front-secret-file`): at least 16 visible ASCII
/// characters, a trailing newline ignored.
pub fn read_secret(path: &std::path::Path) -> Result<HeaderValue, String> {
    let raw = std::fs::read(path).map_err(|e| {
        format!(
            "--front-secret-file (SWITCHBOARD_FRONT_SECRET_FILE) {}: {e}",
            path.display()
        )
    })?;
    let secret = raw.trim_ascii_end();
    if secret.len() < 16 || !secret.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(format!(
            "--front-secret-file (SWITCHBOARD_FRONT_SECRET_FILE) {}: the secret must be at least 16 visible ASCII characters, without spaces",
            path.display()
        ));
    }
    HeaderValue::from_bytes(secret).map_err(|e| format!("--front-secret-file: {e}"))
}

struct Front {
    /// The app's workers, as `host:port` (never empty).
    apps: Vec<String>,
    /// Whose turn it is among `apps` for a request that belongs to no session yet.
    turn: AtomicUsize,
    path: String,
    secret: Option<HeaderValue>,
    directory: Arc<Directory>,
    client: Client<HttpConnector, Incoming>,
    metrics: Arc<Metrics>,
    /// Cloned by every open connection and upgraded connection's copy (see [`drain`]).
    in_flight: Arc<()>,
}

/// Where the front passes a request.
#[derive(Debug, Clone, Copy)]
enum To<'a> {
    /// This pod's app, the worker with this index.
    App(usize),
    /// The front of the pod owning the session, at this address.
    Peer(&'a str),
}

/// Which requests a listening port of the front takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    /// The one port: clients' requests and other fronts' forwarded ones.
    Both,
    /// The port the Service targets when there is a peer port: clients' requests only.
    Public,
    /// The peer port: forwarded requests only.
    Peer,
}

impl Door {
    /// Why this port refuses a request that does (`forwarded`) or does not claim to be
    /// forwarded, if it does.
    fn refuses(self, forwarded: bool) -> Option<&'static str> {
        match (self, forwarded) {
            (Door::Public, true) => Some(
                "switchboard: this port takes no forwarded requests (pods forward to each other on the front's peer port)",
            ),
            (Door::Peer, false) => Some(
                "switchboard: this is the front's peer port, for requests forwarded by the fleet's pods only",
            ),
            _ => None,
        }
    }
}

/// Serves the front until `stop` turns true; then stops accepting and drains (see
/// [`Settings::drain`]). `routes` reaches the backplane (none: embedded, every session is this
/// pod's).
///
/// Draining matters because a front carries other pods' sessions too: a long-poll passing
/// through a front that dies is cut, which Node's engine.io takes for the end of the session
/// and python-engineio may answer with a lost message (its handler of the cut poll still takes
/// the next one). A pod being deleted leaves the Service first; its front then lets what is in
/// flight finish (a long-poll ends within the app's ping interval) before it exits.
pub async fn serve(
    settings: Settings,
    routes: Option<Arc<Routes>>,
    prefix: &str,
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = bind(settings.listen, "--front-listen").await?;
    let peer_listener = match settings.peer_listen {
        Some(addr) => Some(bind(addr, "--front-peer-listen").await?),
        None => None,
    };
    let directory = Directory::new(
        routes,
        prefix,
        settings.advertise.to_string(),
        settings.ttl,
        settings.max_sessions,
        metrics.clone(),
    );
    tokio::spawn(directory.clone().keep());
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let front = Arc::new(Front {
        apps: settings.app.iter().map(ToString::to_string).collect(),
        turn: AtomicUsize::new(0),
        path: settings.path.clone(),
        secret: settings.secret.clone(),
        directory,
        client: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector),
        metrics,
        in_flight: Arc::new(()),
    });
    for route in ["local", "forwarded", "unknown"] {
        let _ = front.metrics.front_requests(route);
    }
    tracing::info!(addr = %settings.listen, peer_addr = ?settings.peer_listen, app = ?settings.app, advertise = %settings.advertise, path = %settings.path, "HTTP front: routing Engine.IO sessions to the pods that own them");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    match peer_listener {
        None => accept(listener, Door::Both, &front, &slots, stop.clone()).await,
        Some(peer_listener) => {
            tokio::join!(
                accept(listener, Door::Public, &front, &slots, stop.clone()),
                accept(peer_listener, Door::Peer, &front, &slots, stop.clone()),
            );
        }
    }
    tracing::info!(
        drain_seconds = settings.drain.as_secs(),
        "front: no longer accepting; letting requests in flight finish"
    );
    drain(&front.in_flight, settings.drain).await;
    Ok(())
}

async fn bind(addr: SocketAddr, flag: &str) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({flag}): {e}"))
    })
}

/// Serves the connections `listener` accepts, as `door`, until `stop` turns true; then closes
/// the listener (connections open go on: see [`drain`]).
async fn accept(
    listener: tokio::net::TcpListener,
    door: Door,
    front: &Arc<Front>,
    slots: &Arc<tokio::sync::Semaphore>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut stopping = stop.clone();
    loop {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stopping) => break,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "front: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let metrics = front.metrics.clone();
        let service = {
            let front = front.clone();
            hyper::service::service_fn(move |req| {
                let front = front.clone();
                async move { Ok::<_, Infallible>(front.handle(req, peer, door).await) }
            })
        };
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_HEAD)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stopping = stop.clone();
        let open = front.in_flight.clone();
        tokio::spawn(async move {
            let _open = open;
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stopped(&mut stopping) => {
                    // Ends the connection after the request in flight, if any, is answered.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            match served {
                // Not HTTP, a head over hyper's limit (answered 431), too slow to send its head:
                // bounded by hyper, named here.
                Err(e) if e.is_parse() || e.is_parse_too_large() || e.is_timeout() => {
                    malformed(&metrics, peer, &e.to_string());
                }
                Err(e) => tracing::debug!(%peer, error = %e, "front: connection ended"),
                Ok(()) => {}
            }
            drop(slot);
        });
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Ends the front: what is in flight, connections and upgraded connections, may finish within
/// `drain`; the rest is cut when the process exits.
async fn drain(in_flight: &Arc<()>, drain: Duration) {
    let everything = async {
        // Each open connection and each upgraded connection's copy holds a clone.
        while Arc::strong_count(in_flight) > 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    match tokio::time::timeout(drain, everything).await {
        Ok(()) => tracing::info!("front: drained, every request in flight finished"),
        Err(_) => tracing::warn!(
            drain_seconds = drain.as_secs(),
            still_open = Arc::strong_count(in_flight) - 1,
            "front: connections still open after the drain period are cut"
        ),
    }
}

/// Counts a request cut or refused for its form, and names it in the log (the first, then
/// every 100th: a flood must not flood the log too).
fn malformed(metrics: &Metrics, peer: SocketAddr, what: &str) {
    metrics.front_requests_malformed.inc();
    let n = metrics.front_requests_malformed.get();
    if n == 1 || n.is_multiple_of(100) {
        tracing::warn!(%peer, error = what, malformed_total = n, "front: refused a malformed, oversized or too slow request");
    }
}

/// A plain-text answer of the front itself.
fn answer(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(text + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Keeps a session active while a request (or an upgraded connection) of it lasts.
struct Active {
    directory: Arc<Directory>,
    sid: String,
}

impl Active {
    fn new(directory: &Arc<Directory>, sid: &str) -> Self {
        directory.begin(sid);
        Active {
            directory: directory.clone(),
            sid: sid.to_owned(),
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.directory.end(&self.sid);
    }
}

impl Front {
    async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        door: Door,
    ) -> Response<Body> {
        // hyper bounds a head that arrives in pieces; one that arrives whole is measured here.
        let head: usize = req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>()
            + req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if head > MAX_HEAD {
            malformed(
                &self.metrics,
                peer,
                &format!("a head of {head} bytes, over {MAX_HEAD}"),
            );
            return answer(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("switchboard: the request's head is over {MAX_HEAD} bytes"),
            );
        }
        if let Some(why) = door.refuses(req.headers().contains_key(&FORWARDED)) {
            self.refused(peer, &req, why);
            return answer(StatusCode::FORBIDDEN, why.into());
        }
        if let Some(claimed) = req.headers_mut().remove(&FORWARDED) {
            let trusted = self
                .secret
                .as_ref()
                .is_some_and(|s| same_secret(s.as_bytes(), claimed.as_bytes()));
            if !trusted {
                let why = "switchboard: this request claims to be forwarded by a pod of the fleet, without the fleet's secret";
                self.refused(peer, &req, why);
                return answer(StatusCode::FORBIDDEN, why.into());
            }
            // A peer found this pod to own the session: its app answers, nothing goes on.
            self.metrics.front_requests("local").inc();
            let Some(sid) = engine::sid_of(req.uri().query()).map(str::to_owned) else {
                return self.pass(req, To::App(self.next_worker()), None).await;
            };
            let worker = match self.directory.owner(&sid).await {
                Owner::Here(worker) => worker,
                _ => 0,
            };
            let active = Active::new(&self.directory, &sid);
            return self.pass(req, To::App(worker), Some(active)).await;
        }
        if !req.uri().path().starts_with(&self.path) {
            return self.pass(req, To::App(self.next_worker()), None).await;
        }
        let query = req.uri().query();
        let Some(sid) = engine::sid_of(query).map(str::to_owned) else {
            self.metrics.front_requests("local").inc();
            if req.method() == hyper::Method::GET && engine::is_polling(query) {
                return self.handshake(req).await;
            }
            // A WebSocket-first handshake: its one connection is its whole session.
            return self.pass(req, To::App(self.next_worker()), None).await;
        };
        match self.directory.owner(&sid).await {
            Owner::Here(worker) => {
                self.metrics.front_requests("local").inc();
                let active = Active::new(&self.directory, &sid);
                self.pass(req, To::App(worker), Some(active)).await
            }
            Owner::There(addr) => {
                self.metrics.front_requests("forwarded").inc();
                let response = self.pass(req, To::Peer(&addr), None).await;
                if response.status() == StatusCode::BAD_GATEWAY {
                    self.directory.forget(&sid);
                }
                response
            }
            Owner::Nobody => {
                // Any worker answers an unknown session as the framework does (400).
                self.metrics.front_requests("unknown").inc();
                self.pass(req, To::App(0), None).await
            }
        }
    }

    /// The next worker in turn, for a request that belongs to no session yet.
    fn next_worker(&self) -> usize {
        match self.apps.len() {
            1 => 0,
            n => self.turn.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    /// Counts a request refused for where it came from (403), and names it in the log (the
    /// first, then every 100th).
    fn refused(&self, peer: SocketAddr, req: &Request<Incoming>, why: &str) {
        self.metrics.front_forwards_refused.inc();
        let n = self.metrics.front_forwards_refused.get();
        if n == 1 || n.is_multiple_of(100) {
            tracing::warn!(%peer, path = %req.uri().path(), refused_total = n, "front: refused a request: {why}");
        }
    }

    /// A polling handshake: the app answers it, and the session it opens is recorded before
    /// the answer leaves.
    async fn handshake(&self, req: Request<Incoming>) -> Response<Body> {
        let worker = self.next_worker();
        let response = match self.send(req, To::App(worker), None).await {
            Ok(response) => response,
            Err(failed) => return failed,
        };
        if response.status() != StatusCode::OK {
            return response.map(BodyExt::boxed);
        }
        let (parts, body) = response.into_parts();
        let body = match Limited::new(body, MAX_HANDSHAKE).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return answer(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "switchboard: the app's handshake answer could not be read (over {MAX_HANDSHAKE} bytes, or cut): {e}"
                    ),
                );
            }
        };
        if let Some(sid) = engine::opened_sid(&body) {
            self.directory.opened(&sid, worker).await;
        }
        Response::from_parts(
            parts,
            Full::new(body).map_err(|never| match never {}).boxed(),
        )
    }

    /// Passes a request to a worker of the local app, or to the front of the pod owning the
    /// session with the fleet's secret, and streams the answer back.
    async fn pass(
        &self,
        req: Request<Incoming>,
        to: To<'_>,
        active: Option<Active>,
    ) -> Response<Body> {
        match self.send(req, to, active).await {
            Ok(response) => response.map(BodyExt::boxed),
            Err(failed) => failed,
        }
    }

    async fn send(
        &self,
        mut req: Request<Incoming>,
        to: To<'_>,
        active: Option<Active>,
    ) -> Result<Response<Incoming>, Response<Body>> {
        let target = match to {
            // A record written under another `--front-app` may name a worker gone since.
            To::App(worker) => self.apps.get(worker).unwrap_or(&self.apps[0]),
            To::Peer(addr) => addr,
        };
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        *req.uri_mut() = match format!("http://{target}{path}").parse() {
            Ok(uri) => uri,
            Err(e) => {
                return Err(answer(
                    StatusCode::BAD_REQUEST,
                    format!("switchboard: a request target the front cannot pass on: {e}"),
                ));
            }
        };
        if let (To::Peer(_), Some(secret)) = (to, &self.secret) {
            req.headers_mut().insert(FORWARDED, secret.clone());
        }
        let upgrading = req.headers().contains_key(hyper::header::UPGRADE);
        let client_side = upgrading.then(|| hyper::upgrade::on(&mut req));
        let mut response = self.client.request(req).await.map_err(|e| {
            let (what, flag) = match to {
                To::Peer(addr) => (
                    format!("the pod owning this session, at {addr},"),
                    "its front",
                ),
                To::App(_) => (format!("the app at {target}"), "--front-app"),
            };
            tracing::warn!(target = %target, error = %e, "front: cannot reach {what}");
            answer(
                StatusCode::BAD_GATEWAY,
                format!("switchboard: {what} did not answer ({flag}): {e}"),
            )
        })?;
        if let Some(client_side) = client_side
            && response.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            let app_side = hyper::upgrade::on(&mut response);
            let open = self.in_flight.clone();
            tokio::spawn(async move {
                let _open = open;
                // The session lives while its upgraded connection is open.
                let _active = active;
                match tokio::try_join!(client_side, app_side) {
                    Ok((client, app)) => {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(client),
                            &mut TokioIo::new(app),
                        )
                        .await;
                    }
                    Err(e) => tracing::debug!(error = %e, "front: an upgrade did not complete"),
                }
            });
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcdeg"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!same_secret(b"", b"x"));
    }

    #[test]
    fn a_secret_file_is_checked_and_its_newline_ignored() {
        let dir = std::env::temp_dir().join(format!("front-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "0123456789abcdefXYZ\n").unwrap();
        assert_eq!(read_secret(&good).unwrap(), "0123456789abcdefXYZ");
        let short = dir.join("short");
        std::fs::write(&short, "tooshort\n").unwrap();
        let e = read_secret(&short).unwrap_err();
        assert!(
            e.contains("--front-secret-file") && e.contains("at least 16"),
            "{e}"
        );
        let spaced = dir.join("spaced");
        std::fs::write(&spaced, "0123456789 abcdefXYZ").unwrap();
        assert!(read_secret(&spaced).is_err());
        let e = read_secret(&dir.join("missing")).unwrap_err();
        assert!(e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
