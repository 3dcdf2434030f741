//! TLS to the backplane: a real `redis-server` serving TLS on a loopback port with certificates
//! made here (rcgen), the sidecar verifying it with a CA bundle, with and without a client
//! certificate, each kind of refusal named in the log and in `/readyz`, and a renewed CA taken up
//! without a restart.

use switchboard_sidecar_support as support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::process::sidecar_binary;
use support::tls::{Certificates, ca, write};
use support::{
    RawClient, RedisServer, Sidecar, SidecarOptions, TempDir, command, free_port, http_body,
    wait_for,
};

/// A redis-server that also serves TLS on the returned port (`auth_clients`: "no", or "yes" for
/// mutual TLS). Its plain port stays for the test's own checks.
fn tls_redis(certs: &Certificates, auth_clients: &str) -> (RedisServer, u16) {
    let port = free_port();
    (tls_redis_on(port, certs, auth_clients), port)
}

/// [`tls_redis`] on a TLS port the caller picked (a server replaced on the same address).
fn tls_redis_on(port: u16, certs: &Certificates, auth_clients: &str) -> RedisServer {
    let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let (port_s, cert, key, ca) = (
        port.to_string(),
        path(&certs.server_cert),
        path(&certs.server_key),
        path(&certs.ca),
    );
    RedisServer::start_with_args(
        None,
        &[
            "--tls-port",
            &port_s,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            auth_clients,
        ],
    )
}

fn tls_sidecar(url: &str, id: &str, certs: &Certificates) -> SidecarOptions {
    SidecarOptions::default()
        .env("SWITCHBOARD_UPSTREAM_URL", url)
        .env(
            "SWITCHBOARD_UPSTREAM_TLS_CA_FILE",
            certs.ca.to_str().unwrap(),
        )
        .arg("--sidecar-id", id)
}

/// Pub/sub across two sidecars and a key command, all over the TLS port.
fn relays_and_passes_through(a: &Sidecar, b: &Sidecar) {
    let mut sub = RawClient::connect(b.addr, "sub");
    sub.call(command(&[b"SUBSCRIBE", b"news"]));
    let mut client = RawClient::connect(a.addr, "client");
    wait_for("b's subscription to count", Duration::from_secs(10), || {
        client.call(command(&[b"PUBSUB", b"NUMSUB", b"news"])) == b"*2\r\n$4\r\nnews\r\n:1\r\n"
    });
    client.call(command(&[b"PUBLISH", b"news", b"over tls"]));
    assert_eq!(
        sub.read_frame(),
        b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$8\r\nover tls\r\n"
    );
    assert_eq!(client.call(command(&[b"SET", b"k", b"v"])), b"+OK\r\n");
    assert_eq!(client.call(command(&[b"GET", b"k"])), b"$1\r\nv\r\n");
}

#[test]
fn the_backplane_over_tls_relays_and_passes_through() {
    let dir = TempDir::new("tls");
    let certs = Certificates::generate(dir.path());
    let (redis, port) = tls_redis(&certs, "no");
    let url = format!("rediss://localhost:{port}");
    let a = tls_sidecar(&url, "pod-a", &certs).start();
    let b = tls_sidecar(&url, "pod-b", &certs).start();
    relays_and_passes_through(&a, &b);
    assert!(
        a.log_text().contains(&format!("rediss://localhost:{port}")),
        "the log names the TLS URL:\n{}",
        a.log_text()
    );
    // The write reached the server the TLS port belongs to.
    let mut admin = redis.admin();
    assert_eq!(admin.call(command(&[b"GET", b"k"])), b"$1\r\nv\r\n");

    // Mutual TLS: a server that demands a client certificate gets the sidecar's.
    let (_mtls, mport) = tls_redis(&certs, "yes");
    let url = format!("rediss://127.0.0.1:{mport}");
    let with_cert = |id: &str| {
        tls_sidecar(&url, id, &certs)
            .env(
                "SWITCHBOARD_UPSTREAM_TLS_CERT_FILE",
                certs.client_cert.to_str().unwrap(),
            )
            .env(
                "SWITCHBOARD_UPSTREAM_TLS_KEY_FILE",
                certs.client_key.to_str().unwrap(),
            )
            .start()
    };
    relays_and_passes_through(&with_cert("m-a"), &with_cert("m-b"));
}

/// A Secret volume as kubelet lays it out: `dir/ca.crt` links to `..data/ca.crt`, and `..data`
/// to the directory of the current version. Returns the path the sidecar is given.
fn mount_ca(dir: &Path, ca: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    renew_ca(dir, ca, "..v1");
    let path = dir.join("ca.crt");
    std::os::unix::fs::symlink("..data/ca.crt", &path).unwrap();
    path
}

/// Swaps in a new version of the volume as kubelet does: a new directory, then `..data`
/// replaced in one `rename`, so a reader sees the old file or the new one, never a mix.
fn renew_ca(dir: &Path, ca: &Path, version: &str) {
    std::fs::create_dir(dir.join(version)).unwrap();
    std::fs::copy(ca, dir.join(version).join("ca.crt")).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[test]
fn a_renewed_ca_file_is_taken_up_without_a_restart() {
    let dir = TempDir::new("tls-renewal");
    let [old, new] = ["old", "new"].map(|name| {
        let dir = dir.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        Certificates::generate(&dir)
    });
    let mounted = mount_ca(&dir.path().join("secret"), &old.ca);
    let port = free_port();
    let redis = tls_redis_on(port, &old, "no");
    let url = format!("rediss://localhost:{port}");
    let sidecar = |id: &str| {
        SidecarOptions::default()
            .env("SWITCHBOARD_UPSTREAM_URL", &url)
            .env(
                "SWITCHBOARD_UPSTREAM_TLS_CA_FILE",
                mounted.to_str().unwrap(),
            )
            .arg("--sidecar-id", id)
            .arg("--reconnect-max-ms", "250")
            .start()
    };
    let (mut a, b) = (sidecar("pod-a"), sidecar("pod-b"));
    relays_and_passes_through(&a, &b);
    let pid = a.pid();

    // The CA is renewed and the server re-issued by it, on the same address.
    renew_ca(&dir.path().join("secret"), &new.ca, "..v2");
    drop(redis);
    wait_for(
        "the sidecar to see the server go",
        Duration::from_secs(15),
        || a.readyz() == Ok(503),
    );
    let redis = tls_redis_on(port, &new, "no");

    wait_for(
        "the sidecar to trust the renewed CA",
        Duration::from_secs(30),
        || a.readyz() == Ok(200) && b.readyz() == Ok(200),
    );
    // The same publish as before the outage, on a channel nobody held across it: delivered
    // (a replay announced for it must not swallow it), and key commands reach the new server.
    relays_and_passes_through(&a, &b);
    let mut admin = redis.admin();
    for (sidecar, key) in [(&a, b"renewed-a"), (&b, b"renewed-b")] {
        let mut client = RawClient::connect(sidecar.addr, "client");
        assert_eq!(client.call(command(&[b"SET", key, b"v"])), b"+OK\r\n");
        assert_eq!(admin.call(command(&[b"GET", key])), b"$1\r\nv\r\n");
    }
    a.assert_running();
    assert_eq!(a.pid(), pid, "the same sidecar process");
    let log = a.log_text();
    assert!(
        log.contains("reloaded the TLS files")
            && log.contains(&format!("--upstream-tls-ca-file {}", mounted.display())),
        "the log names the reloaded file:\n{log}"
    );
    assert!(!log.contains("do not load"), "no failed reload:\n{log}");
}

/// Waits until the sidecar logs `why` and `/readyz` says not ready, naming it too.
fn refused(sidecar: &Sidecar, why: &str) {
    wait_for(
        &format!("the log to say {why:?}"),
        Duration::from_secs(15),
        || sidecar.log_text().contains(why),
    );
    wait_for("/readyz to name it", Duration::from_secs(10), || {
        sidecar.readyz() == Ok(503)
            && http_body(sidecar.http_addr, "/readyz").is_ok_and(|b| b.contains(why))
    });
}

#[test]
fn tls_refusals_say_what_is_wrong_and_which_setting_fixes_it() {
    let dir = TempDir::new("tls-refusals");
    let certs = Certificates::generate(dir.path());
    let (redis, port) = tls_redis(&certs, "no");

    // A CA bundle that did not sign the server's certificate.
    let other = write(dir.path(), "other-ca.crt", &ca("some-other-ca").pem());
    let wrong_ca = SidecarOptions::default()
        .env(
            "SWITCHBOARD_UPSTREAM_URL",
            &format!("rediss://localhost:{port}"),
        )
        .env("SWITCHBOARD_UPSTREAM_TLS_CA_FILE", other.to_str().unwrap())
        .no_wait()
        .start();
    refused(&wrong_ca, "not signed by a CA this sidecar trusts");
    assert!(wrong_ca.log_text().contains("--upstream-tls-ca-file"));

    // A name the certificate does not list.
    let wrong_name = tls_sidecar(&format!("rediss://localhost:{port}"), "n", &certs)
        .env(
            "SWITCHBOARD_UPSTREAM_TLS_SERVER_NAME",
            "redis.elsewhere.example",
        )
        .no_wait()
        .start();
    refused(&wrong_name, "not valid for \"redis.elsewhere.example\"");

    // rediss:// to the plain port.
    let plain = tls_sidecar(&format!("rediss://localhost:{}", redis.port()), "p", &certs)
        .no_wait()
        .start();
    refused(&plain, "is this its TLS port?");

    // Mutual TLS demanded, no client certificate given.
    let (_mtls, mport) = tls_redis(&certs, "yes");
    let no_cert = tls_sidecar(&format!("rediss://localhost:{mport}"), "c", &certs)
        .no_wait()
        .start();
    refused(
        &no_cert,
        "--upstream-tls-cert-file and --upstream-tls-key-file",
    );

    // Skipping verification, spelled out, connects despite the unknown CA, and says so.
    let insecure = SidecarOptions::default()
        .env(
            "SWITCHBOARD_UPSTREAM_URL",
            &format!("rediss://localhost:{port}"),
        )
        .env("SWITCHBOARD_UPSTREAM_TLS_INSECURE_SKIP_VERIFY", "true")
        .start();
    assert!(insecure.log_text().contains("NOT checked"));
}

/// Runs the sidecar with `env` and expects it to exit at once with an error containing `why`.
fn fails_to_start(env: &[(&str, &str)], why: &str) {
    let out = Command::new(sidecar_binary())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-listen", &format!("127.0.0.1:{}", free_port())])
        .envs(env.iter().copied())
        .output()
        .expect("run the sidecar");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with {env:?}:\n{stderr}");
    assert!(stderr.contains(why), "{env:?}: {why:?} not in:\n{stderr}");
}

#[test]
fn bad_tls_settings_stop_the_sidecar_with_the_setting_named() {
    let dir = TempDir::new("tls-settings");
    let certs = Certificates::generate(dir.path());
    let url = ("SWITCHBOARD_UPSTREAM_URL", "rediss://localhost:6380");
    fails_to_start(
        &[
            url,
            ("SWITCHBOARD_UPSTREAM_TLS_CA_FILE", "/nonexistent/ca.crt"),
        ],
        "--upstream-tls-ca-file /nonexistent/ca.crt",
    );
    fails_to_start(
        &[
            url,
            (
                "SWITCHBOARD_UPSTREAM_TLS_CA_FILE",
                certs.server_key.to_str().unwrap(),
            ),
        ],
        "no certificate in it",
    );
    fails_to_start(
        &[
            url,
            (
                "SWITCHBOARD_UPSTREAM_TLS_CERT_FILE",
                certs.client_cert.to_str().unwrap(),
            ),
        ],
        "go together",
    );
    fails_to_start(
        &[
            ("SWITCHBOARD_UPSTREAM_URL", "redis://localhost:6379"),
            (
                "SWITCHBOARD_UPSTREAM_TLS_CA_FILE",
                certs.ca.to_str().unwrap(),
            ),
        ],
        "no --upstream (SWITCHBOARD_UPSTREAM_URL) uses TLS",
    );
    fails_to_start(
        &[("SWITCHBOARD_UPSTREAM_URL", "memcached://localhost:11211")],
        "expected redis://, rediss:// (TLS)",
    );
}
