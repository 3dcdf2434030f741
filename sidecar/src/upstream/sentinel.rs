//! Finding the primary behind Sentinel: ask each Sentinel in turn
//! `SENTINEL GET-MASTER-ADDR-BY-NAME <master>`, starting with the one that answered last.
//!
//! Resolution happens on every connect, and the relay reconnects on every link loss, so a
//! failover (Sentinel kills the old primary's clients when it demotes it) is just a reconnect
//! that lands on the new primary. The primary's own `ROLE` is checked after connecting (see
//! [`Endpoint::connect_to`]), since a Sentinel may still name the old one for a moment.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{Addr, Endpoint, UpstreamError, command};
use crate::resp::Value;

/// How long one Sentinel may take to answer before the next is asked.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(1);

/// What one Sentinel said.
enum Answer {
    Primary(Addr),
    UnknownMaster,
}

pub(super) async fn primary(
    endpoint: &Endpoint,
    sentinels: &[Addr],
    master: &str,
    preferred: &AtomicUsize,
) -> Result<Addr, UpstreamError> {
    let first = preferred.load(Ordering::Relaxed) % sentinels.len();
    let mut failures = Vec::new();
    let mut unknown = 0;
    for i in 0..sentinels.len() {
        let at = (first + i) % sentinels.len();
        let sentinel = &sentinels[at];
        match tokio::time::timeout(SENTINEL_TIMEOUT, ask(endpoint, sentinel, master)).await {
            Ok(Ok(Answer::Primary(addr))) => {
                preferred.store(at, Ordering::Relaxed);
                return Ok(addr);
            }
            Ok(Ok(Answer::UnknownMaster)) => {
                unknown += 1;
                failures.push(format!("{sentinel}: unknown master"));
            }
            Ok(Err(e)) => failures.push(format!("{sentinel}: {e}")),
            Err(_) => failures.push(format!("{sentinel}: no answer within {SENTINEL_TIMEOUT:?}")),
        }
    }
    let failures = failures.join("; ");
    if unknown == sentinels.len() {
        Err(UpstreamError::UnknownMaster {
            endpoint: endpoint.to_string(),
            master: master.to_owned(),
            failures,
        })
    } else {
        Err(UpstreamError::NoSentinel {
            endpoint: endpoint.to_string(),
            failures,
        })
    }
}

/// One Sentinel, authenticated with the backplane's own credentials when there are any.
async fn ask(endpoint: &Endpoint, sentinel: &Addr, master: &str) -> Result<Answer, String> {
    // Sentinels of a TLS backplane speak TLS too.
    let mut link = endpoint.dial(sentinel).await.map_err(|e| e.to_string())?;
    if let Some(pw) = &endpoint.password {
        let auth = match &endpoint.username {
            Some(user) => command(&["AUTH", user, pw]),
            None => command(&["AUTH", pw]),
        };
        if let Value::Error(e) = link.call(&auth.raw).await.map_err(|e| e.to_string())? {
            return Err(format!("refused AUTH: {}", String::from_utf8_lossy(&e)));
        }
    }
    let reply = link
        .call(&command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", master]).raw)
        .await
        .map_err(|e| e.to_string())?;
    match &reply {
        Value::Null => Ok(Answer::UnknownMaster),
        Value::Error(e) => Err(String::from_utf8_lossy(e).into_owned()),
        _ => {
            let parts = reply.as_elements().unwrap_or_default();
            let text = |i: usize| {
                parts
                    .get(i)
                    .and_then(Value::as_bytes)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            };
            match (text(0), text(1).and_then(|p| p.parse::<u16>().ok())) {
                (Some(host), Some(port)) => Ok(Answer::Primary(Addr { host, port })),
                _ => Err(format!("unexpected reply {reply:?}")),
            }
        }
    }
}
