//! The controllers, the scheduler and kwok's fake node work: a Deployment's pods reach Running.
//! Later issues rely on this to test sidecar injection on pods that "run".

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use switchboard_testkit::{FAKE_NODE, Options};

#[tokio::test]
async fn deployment_of_three_reaches_three_running_pods() {
    let Some(control_plane) = switchboard_testkit::start_or_skip(Options { fake_node: true }).await
    else {
        return;
    };
    let client = control_plane.client().await.unwrap();
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "chat" },
        "spec": {
            "replicas": 3,
            "selector": { "matchLabels": { "app": "chat" } },
            "template": {
                "metadata": { "labels": { "app": "chat" } },
                "spec": { "containers": [{ "name": "app", "image": "chat:never-pulled" }] },
            },
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client, "default");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let listed = pods
            .list(&ListParams::default().labels("app=chat"))
            .await
            .unwrap();
        let running: Vec<&Pod> = listed
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        if running.len() == 3 {
            assert!(
                running.iter().all(
                    |p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(FAKE_NODE)
                )
            );
            assert_eq!(listed.items.len(), 3, "no more pods than replicas");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 3 pods Running after 90s; logs in {}",
            running.len(),
            control_plane.dir().display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
