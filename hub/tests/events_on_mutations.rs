//! In-process hub behaviour: registry mutations publish lifecycle events on the
//! bus that webhooks, MQTT and the dashboard stream will subscribe to, and trust
//! metadata is re-signed before it expires.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use flotilla_hub::config::{Flags, HubConfig};
use flotilla_hub::registry::Registry;

/// A hub served in this process until `stop` is sent.
struct InProcess {
    url: String,
    token: String,
    registry: Arc<Registry>,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(dir: &std::path::Path) -> InProcess {
    let flags = Flags {
        data_dir: Some(dir.to_path_buf()),
        api_listen: Some("127.0.0.1:0".into()),
        sync_listen: Some("127.0.0.1:0".into()),
        mqtt_listen: Some("127.0.0.1:0".into()),
        ..Flags::default()
    };
    let config = HubConfig::resolve(None, &|_| None, &flags).unwrap();
    let hub = flotilla_hub::server::start(&config).await.unwrap();
    let registry = hub.registry.clone();
    let url = format!("http://{}", hub.api_addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(hub.serve(async {
        let _ = stopped.await;
    }));
    let token = std::fs::read_to_string(dir.join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    InProcess {
        url,
        token,
        registry,
        stop,
        serving,
    }
}

impl InProcess {
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.serving.await.unwrap().unwrap();
    }
}

/// Uploads and registers a small model as `name` (blocking HTTP).
fn register(url: &str, token: &str, name: &str) {
    let auth = format!("Bearer {token}");
    let model = flotilla_runtime::generate::mlp(&[8, 4], 1);
    let up: serde_json::Value = ureq::post(&format!("{url}/api/v1/uploads"))
        .set("Authorization", &auth)
        .send_json(serde_json::json!({"file_name": "m.onnx", "size": model.len()}))
        .unwrap()
        .into_json()
        .unwrap();
    let id = up["id"].as_str().unwrap();
    ureq::patch(&format!("{url}/api/v1/uploads/{id}"))
        .set("Authorization", &auth)
        .set("Upload-Offset", "0")
        .send_bytes(&model)
        .unwrap();
    ureq::post(&format!("{url}/api/v1/models/{name}/versions"))
        .set("Authorization", &auth)
        .send_json(serde_json::json!({"upload": id}))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_delete_publish_events_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path()).await;
    let mut events = hub.registry.events().subscribe();
    let (url, token) = (hub.url.clone(), hub.token.clone());
    tokio::task::spawn_blocking(move || {
        register(&url, &token, "m");
        ureq::delete(&format!("{url}/api/v1/models/m/versions/1"))
            .set("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap();
    })
    .await
    .unwrap();

    let first = events.recv().await.unwrap();
    assert_eq!(
        (
            first.kind.as_str(),
            first.object.as_str(),
            first.actor.as_str()
        ),
        ("model.registered", "model/m/1", "admin")
    );
    assert!(first.data["sha256"].as_str().is_some());
    let second = events.recv().await.unwrap();
    assert_eq!(
        (second.kind.as_str(), second.object.as_str()),
        ("model.version.deleted", "model/m/1")
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_are_re_signed_before_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path()).await;
    let (url, token, r) = (hub.url.clone(), hub.token.clone(), hub.registry.clone());
    tokio::task::spawn_blocking(move || {
        let now = flotilla_hub::now();
        assert!(
            !r.refresh_trust_if_due(now).unwrap(),
            "nothing published yet, nothing to refresh"
        );
        register(&url, &token, "m");
        assert!(
            !r.refresh_trust_if_due(now).unwrap(),
            "a fresh timestamp is left alone"
        );
        let later = now.plus_secs(6 * 86_400);
        assert!(
            r.refresh_trust_if_due(later).unwrap(),
            "a timestamp a day from expiry is re-signed"
        );
        let (state, p) = r.store().trust().unwrap().unwrap();
        assert_eq!(state.publication_version, 2);
        assert_eq!(state.targets.version, 1, "a refresh leaves targets alone");
        let ts = flotilla_protocol::tuf::Envelope::parse(
            flotilla_protocol::tuf::Role::Timestamp,
            &p.timestamp,
            u64::MAX,
        )
        .unwrap();
        let ts: flotilla_protocol::tuf::Timestamp =
            ts.body(flotilla_protocol::tuf::Role::Timestamp).unwrap();
        assert!(
            ts.expires > later.plus_secs(86_400 * 6),
            "new expiry counts from the refresh"
        );
        assert!(r.audit_verify().unwrap().ok);
    })
    .await
    .unwrap();
    hub.stop().await;
}
