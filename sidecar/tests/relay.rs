//! The relay's promises that the oracle cannot check, because Redis has no equivalent: memory
//! stays bounded when a local subscriber stops reading, and publishes made while the backplane
//! is down are buffered up to the limit, counted beyond it, and delivered in order afterwards.

use switchboard_sidecar_support as support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{RawClient, RedisServer, SidecarOptions, command, http_get};

/// One metric's value from `/metrics`.
fn metric(http: SocketAddr, name: &str) -> f64 {
    let mut s = TcpStream::connect(http).expect("connect to the metrics port");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("metric {name} missing from /metrics"))
        .trim()
        .parse()
        .unwrap()
}

fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !done() {
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_subscriber_that_stops_reading_loses_messages_not_memory_and_slows_no_one() {
    let sidecar = SidecarOptions::embedded()
        .arg("--client-buffer-bytes", "65536")
        .start();
    let mut stalled = RawClient::connect(sidecar.addr, "stalled");
    stalled.call(command(&[b"SUBSCRIBE", b"firehose"]));
    let mut reader = RawClient::connect(sidecar.addr, "reader");
    reader.call(command(&[b"SUBSCRIBE", b"firehose"]));
    let mut publisher = RawClient::connect(sidecar.addr, "publisher");

    // 32 MiB in all: far more than the stalled client's socket buffers plus its 64 KiB limit.
    let payload = vec![b'x'; 16 * 1024];
    let messages = 2000;
    for i in 0..messages {
        let mut body = format!("{i:05}").into_bytes();
        body.extend_from_slice(&payload);
        publisher.send(command(&[b"PUBLISH", b"firehose", &body]));
        publisher.read_frame();
        let frame = reader.read_frame();
        assert!(
            frame.windows(5).any(|w| w == format!("{i:05}").as_bytes()),
            "the reading subscriber must get every message, in order (message {i})"
        );
    }
    let dropped = metric(
        sidecar.http_addr,
        "switchboard_sidecar_messages_dropped_slow_client_total",
    );
    assert!(
        dropped > 0.0,
        "the stalled subscriber's messages beyond its limit are dropped and counted"
    );
    assert!(
        dropped < f64::from(messages),
        "messages that fit were queued: {dropped}"
    );
    assert_eq!(
        http_get(sidecar.http_addr, "/healthz"),
        Ok(200),
        "the sidecar is still serving"
    );
    drop(stalled);
}

#[test]
fn publishes_during_an_outage_are_buffered_counted_beyond_the_limit_and_flushed_in_order() {
    let mut redis = RedisServer::start();
    let sidecar = SidecarOptions::upstream(redis.url())
        .arg("--publish-buffer-messages", "5")
        .arg("--heartbeat-ms", "200")
        .arg("--peer-ttl-ms", "1000")
        .arg("--reconnect-max-ms", "200")
        .start();
    let mut subscriber = RawClient::connect(sidecar.addr, "subscriber");
    subscriber.call(command(&[b"SUBSCRIBE", b"news"]));
    let mut publisher = RawClient::connect(sidecar.addr, "publisher");

    redis.stop();
    wait_for(
        "/readyz to report the lost backplane",
        Duration::from_secs(10),
        || http_get(sidecar.http_addr, "/readyz") == Ok(503),
    );
    for i in 0..8 {
        let reply = publisher.call(command(&[b"PUBLISH", b"news", format!("m{i}").as_bytes()]));
        assert!(
            reply.starts_with(b":"),
            "publishing during an outage gets a normal reply"
        );
    }
    assert_eq!(
        metric(sidecar.http_addr, "switchboard_sidecar_publishes_buffered"),
        5.0
    );
    assert_eq!(
        metric(
            sidecar.http_addr,
            "switchboard_sidecar_publishes_dropped_total"
        ),
        3.0
    );

    redis.start_again();
    for i in 0..5 {
        let expected = format!("*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nm{i}\r\n");
        assert_eq!(
            String::from_utf8_lossy(&subscriber.read_frame()),
            expected,
            "buffered publishes arrive in order, on the same connection"
        );
    }
    subscriber.assert_nothing_within(Duration::from_millis(300));
    assert_eq!(
        metric(
            sidecar.http_addr,
            "switchboard_sidecar_upstream_reconnects_total"
        ),
        1.0
    );
}
