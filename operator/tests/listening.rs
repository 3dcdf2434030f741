//! "The app stopped listening", end to end: a real python-socketio server (AsyncRedisManager)
//! behind a real sidecar (in-process, configured from the ConfigMap the operator wrote), a pod in
//! a real control plane, and the operator naming that pod in the RealtimeCluster's status.
//!
//! No kubelet runs here (kwok's node does not probe), so the test plays the kubelet's part for
//! the one pod: it probes the sidecar's `/readyz` and writes the sidecar container's `ready` into
//! the pod's status, as the kubelet's readiness probe would. Everything else is real: the
//! listener dies the way python-socketio#1581 describes (its task ends and its pub/sub
//! connection is gone, while the server keeps serving), the sidecar notices, and the operator
//! reads the pod's status.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;
use support::scenario::{SIDECAR, Scenario};
use support::{condition, eventually, has, http_response as get, until, unused_port};

/// The venv `tests/interop/run.sh` keeps (python-socketio, redis-py, aiohttp pinned in
/// `tests/requirements.txt`), created here the same way when missing; `None` (skip, loudly)
/// without python3 outside CI.
/// The venv's python, made once per test binary: the tests here run in parallel, and two
/// `python3 -m venv` + `pip install` into one directory at once break each other (seen on a
/// fresh clone in CI).
fn python() -> Option<PathBuf> {
    static PYTHON: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    PYTHON.get_or_init(make_python).clone()
}

fn make_python() -> Option<PathBuf> {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests");
    let python = tests.join(".venv/bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import socketio, aiohttp, redis"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.is_file() && ready(&python) {
        return Some(python);
    }
    let made = Command::new("bash")
        .arg("-c")
        .arg(
            "set -e; cd \"$1\"; [ -x .venv/bin/python ] || python3 -m venv .venv; \
             .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt",
        )
        .arg("bash")
        .arg(&tests)
        .status()
        .is_ok_and(|s| s.success());
    if made && ready(&python) {
        return Some(python);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and the python-socketio venv (tests/.venv) could not be made"
    );
    eprintln!("\n#### SKIPPING: no python-socketio (tests/.venv) and none could be installed\n");
    None
}

/// A python-socketio server process (`tests/apps/listening_app.py`); killed when dropped.
struct App {
    child: Child,
    port: u16,
}

impl App {
    async fn start(python: &Path, redis_port: u16, write_only: bool) -> App {
        let port = unused_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/listening_app.py");
        let mut command = Command::new(python);
        command
            .arg(script)
            .args(["--port", &port.to_string()])
            .args(["--redis-url", &format!("redis://127.0.0.1:{redis_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if write_only {
            command.arg("--write-only");
        }
        let app = App {
            child: command.spawn().expect("python starts"),
            port,
        };
        eventually("the python-socketio app serving", 60, async || {
            get(&format!("http://127.0.0.1:{port}/emit")).await
        })
        .await;
        app
    }

    async fn kill_listener(&self) {
        let body = get(&format!("http://127.0.0.1:{}/kill-listener", self.port)).await;
        assert_eq!(body.map(|(_, b)| b).as_deref(), Some("listener killed\n"));
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sidecar in this process, configured by `env` (the operator's ConfigMap) plus loopback
/// listeners; embedded (no backplane: the pod's Redis runs on kwok's fake node).
struct Sidecar {
    redis_port: u16,
    http: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Sidecar {
    async fn start(config: &ConfigMap) -> Sidecar {
        let data = config.data.clone().unwrap_or_default();
        let redis_port = unused_port();
        let http: SocketAddr = format!("127.0.0.1:{}", unused_port()).parse().unwrap();
        let mut args = vec![
            "switchboard-sidecar".to_owned(),
            format!("--listen=127.0.0.1:{redis_port}"),
            format!("--http-listen={http}"),
        ];
        // The listening check's settings exactly as the operator rendered them.
        for (var, flag) in [
            ("SWITCHBOARD_EXPECT_SUBSCRIPTION", "--expect-subscription"),
            (
                "SWITCHBOARD_LISTENING_GRACE_SECONDS",
                "--listening-grace-seconds",
            ),
        ] {
            let value = data.get(var).unwrap_or_else(|| panic!("{var} in {data:?}"));
            args.push(format!("{flag}={value}"));
        }
        let config = switchboard_sidecar::config::Config::parse_from_env_and_args(args).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(switchboard_sidecar::run(config, async move {
            let _ = stopped.await;
        }));
        let sidecar = Sidecar {
            redis_port,
            http,
            _stop: stop,
        };
        eventually("the sidecar serving /healthz", 30, async || {
            sidecar.get("/healthz").await
        })
        .await;
        sidecar
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        get(&format!("http://{}{path}", self.http)).await
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

/// Plays the kubelet's readiness probe for `pod`: writes the sidecar container's `ready` (and
/// the pod's Ready condition) from the sidecar's `/readyz`, until `stop` is set.
fn probe_like_the_kubelet(
    pods: Api<Pod>,
    pod: String,
    readyz: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let ready = get(&readyz).await.is_some_and(|(status, _)| status == 200);
            if let Ok(mut current) = pods.get_status(&pod).await {
                let status = current.status.get_or_insert_with(Default::default);
                let mut changed = false;
                for c in status.container_statuses.iter_mut().flatten() {
                    if c.name == SIDECAR && c.ready != ready {
                        c.ready = ready;
                        changed = true;
                    }
                }
                let all = status.container_statuses.iter().flatten().all(|c| c.ready);
                for c in status.conditions.iter_mut().flatten() {
                    if c.type_ == "Ready" || c.type_ == "ContainersReady" {
                        let want = if all { "True" } else { "False" };
                        if c.status != want {
                            c.status = want.into();
                            changed = true;
                        }
                    }
                }
                if changed {
                    // A conflict with kwok's own write is retried on the next round.
                    let _ = pods
                        .replace_status(&pod, &PostParams::default(), &current)
                        .await;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

#[tokio::test]
async fn a_pod_whose_app_stopped_listening_is_named_until_the_app_restarts() {
    let Some(s) = Scenario::new("listening").await else {
        return;
    };
    let Some(python) = python() else {
        return;
    };
    let _operator = s.operator("op-listening");
    s.create_cluster(
        "chat",
        json!({
            "selector": { "matchLabels": { "app": "chat" } },
            "framework": "python-socketio",
            "app": { "listening": { "graceSeconds": 2 } },
        }),
    )
    .await;
    // The preset's subscription and the spec's grace, rendered for the sidecar.
    let config: ConfigMap = eventually("ConfigMap chat-sidecar", 60, async || {
        s.get("chat-sidecar").await
    })
    .await;
    let data = config.data.clone().unwrap();
    assert_eq!(data["SWITCHBOARD_EXPECT_SUBSCRIPTION"], "socketio");
    assert_eq!(data["SWITCHBOARD_LISTENING_GRACE_SECONDS"], "2");

    let sidecar = Sidecar::start(&config).await;
    let mut app = App::start(&python, sidecar.redis_port, false).await;
    until(
        "the app's subscription held through the sidecar",
        30,
        async || {
            sidecar
                .metric("switchboard_sidecar_local_subscriptions")
                .await
        },
        |n| n.is_some_and(|n| n >= 1.0),
    )
    .await;

    // The pod this app and sidecar are, in the API: kwok runs it; the test probes for it.
    s.create_pod("chat-0", json!({ "app": "chat" }), true).await;
    until(
        "kwok running chat-0",
        60,
        async || s.pods.get_status("chat-0").await.unwrap(),
        |p| p.status.as_ref().is_some_and(|st| st.pod_ip.is_some()),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let kubelet = probe_like_the_kubelet(
        s.pods.clone(),
        "chat-0".into(),
        format!("http://{}/readyz", sidecar.http),
        stop.clone(),
    );
    s.until_cluster("chat", "SidecarsReady=True", 120, |rtc| {
        has(rtc, "SidecarsReady", "True", "AllReady")
    })
    .await;

    // The listener dies; the server keeps running.
    app.kill_listener().await;
    let (status, body) = until(
        "/readyz answering 503",
        30,
        async || sidecar.get("/readyz").await.unwrap(),
        |(status, _)| *status == 503,
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        body.contains("stopped listening") && body.contains("socketio"),
        "{body}"
    );
    assert_eq!(
        sidecar
            .metric("switchboard_sidecar_app_listener_lost_total")
            .await,
        Some(1.0)
    );
    assert_eq!(
        sidecar
            .metric("switchboard_sidecar_app_not_listening")
            .await,
        Some(1.0)
    );
    let rtc = s
        .until_cluster("chat", "SidecarsReady=False naming chat-0", 60, |rtc| {
            has(rtc, "SidecarsReady", "False", "SidecarsNotReady")
        })
        .await;
    let message = condition(&rtc, "SidecarsReady").unwrap().message;
    assert!(message.contains("chat-0"), "{message}");
    assert!(message.contains("stopped listening"), "{message}");
    assert!(message.contains("kubectl delete pod"), "{message}");

    // Restarting the app brings the subscription back, and the pod off the list.
    drop(app);
    app = App::start(&python, sidecar.redis_port, false).await;
    until(
        "/readyz ready again",
        30,
        async || sidecar.get("/readyz").await.unwrap(),
        |(status, _)| *status == 200,
    )
    .await;
    assert_eq!(
        sidecar
            .metric("switchboard_sidecar_app_not_listening")
            .await,
        Some(0.0)
    );
    s.until_cluster("chat", "SidecarsReady=True again", 60, |rtc| {
        has(rtc, "SidecarsReady", "True", "AllReady")
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    kubelet.await.unwrap();
    drop(app);
}

#[tokio::test]
async fn a_pure_emitter_never_trips_the_check() {
    let Some(s) = Scenario::new("listening-emitter").await else {
        return;
    };
    let Some(python) = python() else {
        return;
    };
    let _operator = s.operator("op-emitter");
    s.create_cluster(
        "emitter",
        json!({
            "selector": { "matchLabels": { "app": "emitter" } },
            "framework": "python-socketio",
            "app": { "listening": { "graceSeconds": 1 } },
        }),
    )
    .await;
    let config: ConfigMap = eventually("ConfigMap emitter-sidecar", 60, async || {
        s.get("emitter-sidecar").await
    })
    .await;
    let sidecar = Sidecar::start(&config).await;
    let app = App::start(&python, sidecar.redis_port, true).await;
    // It publishes (write_only) and never subscribes.
    until(
        "publishes through the sidecar",
        30,
        async || {
            get(&format!("http://127.0.0.1:{}/emit", app.port)).await;
            sidecar.metric("switchboard_sidecar_publishes_total").await
        },
        |n| n.is_some_and(|n| n >= 3.0),
    )
    .await;
    // Watch for three grace periods: the check must stay unarmed, /readyz ready.
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        let (status, body) = sidecar.get("/readyz").await.unwrap();
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        sidecar
            .metric("switchboard_sidecar_app_listener_lost_total")
            .await,
        Some(0.0)
    );
    assert_eq!(
        sidecar
            .metric("switchboard_sidecar_local_subscriptions")
            .await,
        Some(0.0)
    );
}
