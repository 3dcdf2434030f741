//! Pure checks of the API types and the generated CRD; the API server's enforcement is tested in
//! `operator/tests/`.

use kube::CustomResourceExt;
use serde_json::Value;

use super::*;

const MINIMAL: &str = "
selector: { matchLabels: { app: chat } }
framework: python-socketio
";

#[test]
fn minimal_spec_is_a_selector_and_a_framework() {
    let spec: RealtimeClusterSpec = serde_yaml::from_str(MINIMAL).unwrap();
    assert_eq!(spec.framework, Framework::PythonSocketio);
    assert_eq!(spec.app, App::default());
    assert_eq!(spec.backplane, Backplane::default());
    assert_eq!(spec.sidecar, Sidecar::default());
    assert_eq!(spec.ingress, None);
    let managed = spec
        .backplane
        .managed
        .as_ref()
        .expect("a managed backplane by default");
    assert_eq!((managed.replicas, managed.shards), (1, 1));
    assert!(!managed.persistence.enabled);
}

#[test]
fn presets_fill_what_the_spec_leaves_out() {
    let mut spec: RealtimeClusterSpec = serde_yaml::from_str(MINIMAL).unwrap();
    assert_eq!(spec.app_port(), Some(5000));
    assert_eq!(spec.redis_url_env(), ["REDIS_URL"]);

    spec.framework = Framework::OpenWebui;
    assert_eq!(spec.app_port(), Some(8080));
    assert_eq!(spec.redis_url_env(), ["REDIS_URL", "WEBSOCKET_REDIS_URL"]);
    assert!(
        Framework::OpenWebui
            .preset()
            .required_env
            .contains(&("WEBSOCKET_MANAGER", "redis"))
    );

    spec.framework = Framework::Generic;
    assert_eq!(spec.app_port(), None);

    spec.app = App {
        port: Some(9000),
        redis_url_env: Some(vec!["BROKER_URL".into()]),
        listening: None,
        engineio_path: None,
        worker_ports: None,
    };
    assert_eq!(spec.app_port(), Some(9000));
    assert_eq!(spec.app_ports(), [9000]);
    spec.app.worker_ports = Some(vec![9000, 9001]);
    assert_eq!(
        spec.app_ports(),
        [9000, 9001],
        "the workers' ports, not the app's"
    );
    spec.app.worker_ports = None;
    assert_eq!(spec.redis_url_env(), ["BROKER_URL"]);
    assert_eq!(spec.engineio_path(), "/socket.io/");
    spec.framework = Framework::OpenWebui;
    assert_eq!(
        spec.engineio_path(),
        "/ws/socket.io/",
        "Open WebUI's preset"
    );
    spec.app.engineio_path = Some("/rt/socket.io/".into());
    assert_eq!(spec.engineio_path(), "/rt/socket.io/", "the spec's wins");
}

#[test]
fn sidecar_defaults_mirror_the_sidecar_flags() {
    // The sidecar's own defaults (sidecar/src/config.rs): --publish-buffer-bytes 8 MiB,
    // --publish-buffer-messages 10000, --client-buffer-bytes 32 MiB.
    let sidecar = Sidecar::default();
    assert_eq!(sidecar.publish_buffer_bytes, 8 << 20);
    assert_eq!(sidecar.publish_buffer_messages, 10_000);
    assert_eq!(sidecar.client_buffer_bytes, 32 << 20);
}

#[test]
fn crd_names_scope_and_columns() {
    let crd = RealtimeCluster::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("realtimeclusters.switchboard.dev")
    );
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["rtc".to_string()][..])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .filter(|c| c.priority.unwrap_or(0) == 0)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Ready", "Pods", "Backplane", "Routing", "Age"]);
}

#[test]
fn every_cel_rule_names_its_field() {
    let crd = serde_json::to_value(RealtimeCluster::crd()).unwrap();
    let mut rules = Vec::new();
    collect_rules(&crd, &mut rules);
    assert!(
        rules.len() >= 8,
        "expected the cross-field rules, found {rules:?}"
    );
    for (rule, message) in rules {
        assert!(
            message.starts_with("spec."),
            "rule {rule:?} has a message that names no field: {message:?}"
        );
    }
}

fn collect_rules(value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                if key == "x-kubernetes-validations" {
                    for rule in child.as_array().unwrap() {
                        out.push((
                            rule["rule"].as_str().unwrap().to_string(),
                            rule["message"].as_str().unwrap_or_default().to_string(),
                        ));
                    }
                } else {
                    collect_rules(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_rules(item, out)),
        _ => {}
    }
}

#[test]
fn committed_crd_matches_the_types() {
    let committed = include_str!("../../../crds/realtimeclusters.switchboard.dev.yaml");
    let generated = serde_yaml::to_string(&RealtimeCluster::crd()).unwrap();
    assert!(
        committed == generated,
        "crds/ is stale: run scripts/gen-crds.sh"
    );
}
