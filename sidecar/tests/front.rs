//! The HTTP front's settings: a wrong one stops the sidecar at start with a message naming the
//! flag, never a front that half works. (Its routing is proven end to end with real socket
//! servers behind a round-robin nginx in `tests/interop/test_session_routing.py`.)

use switchboard_sidecar_support as support;

use std::time::Duration;

use support::{RedisServer, SidecarOptions, TempDir, free_port};

/// Starts a sidecar with `options` and expects it to exit at once with `wanted` in its log.
fn refused(options: SidecarOptions, wanted: &str) {
    let mut sidecar = options.no_wait().start();
    let status = sidecar.wait_for_exit(Duration::from_secs(20));
    let log = sidecar.log_text();
    assert!(!status.success(), "exited with {status}; log:\n{log}");
    assert!(log.contains(wanted), "the log names {wanted:?}:\n{log}");
}

#[test]
fn bad_front_settings_stop_the_sidecar_naming_the_flag() {
    let redis = RedisServer::start();
    let listen = format!("127.0.0.1:{}", free_port());
    let dir = TempDir::new("front-settings");
    let short = dir.path().join("short");
    std::fs::write(&short, "short\n").unwrap();

    refused(
        SidecarOptions::embedded().arg("--front-listen", &format!("0.0.0.0:{}", free_port())),
        "--front-advertise",
    );
    refused(
        SidecarOptions::embedded()
            .arg("--front-listen", &listen)
            .arg("--front-path", "socket.io"),
        "--front-path",
    );
    refused(
        SidecarOptions::embedded()
            .arg("--front-listen", &listen)
            .arg("--session-ttl-ms", "100"),
        "--session-ttl-ms",
    );
    refused(
        SidecarOptions::upstream(redis.url()).arg("--front-listen", &listen),
        "--front-secret-file",
    );
    refused(
        SidecarOptions::upstream(redis.url())
            .arg("--front-listen", &listen)
            .arg("--front-secret-file", short.to_str().unwrap()),
        "at least 16 visible ASCII characters",
    );
    refused(
        SidecarOptions::upstream(redis.url())
            .arg("--front-listen", &listen)
            .arg("--front-secret-file", "/nonexistent/secret"),
        "/nonexistent/secret",
    );

    // The peer port.
    let peer = format!("127.0.0.1:{}", free_port());
    refused(
        SidecarOptions::embedded().arg("--front-peer-listen", &peer),
        "give --front-listen too",
    );
    refused(
        SidecarOptions::embedded()
            .arg("--front-listen", &listen)
            .arg("--front-peer-listen", &listen),
        "--front-peer-listen (",
    );
    refused(
        SidecarOptions::embedded()
            .arg("--front-listen", &listen)
            .arg("--front-peer-listen", &format!("0.0.0.0:{}", free_port())),
        "--front-peer-listen (0.0.0.0",
    );
    refused(
        SidecarOptions::embedded()
            .arg("--front-listen", &listen)
            .arg("--front-peer-listen", &peer)
            .arg(
                "--front-advertise",
                &format!("0.0.0.0:{}", peer_port(&peer)),
            ),
        "--front-advertise (0.0.0.0",
    );
    refused(
        SidecarOptions::embedded()
            .arg("--front-listen", &listen)
            .arg("--front-peer-listen", &peer)
            .arg("--front-advertise", &listen),
        "must name the peer port",
    );
}

/// The port of a `host:port` the test made.
fn peer_port(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap()
}
