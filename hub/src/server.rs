//! Starting and stopping the hub: data directory, keys, store, first admin
//! token, the API listener, the QUIC sync endpoint, graceful shutdown.
//!
//! Zero-configuration start: on a first start without keys the hub creates
//! them (warning that production root keys belong offline) and writes an admin
//! token to `DATA/admin-token` (0600). It prints each address it bound as one
//! line on stdout, so scripts and tests can use port 0:
//!
//! ```text
//! flotilla-hub: API listening on http://127.0.0.1:8440
//! flotilla-hub: sync listening on 0.0.0.0:7443 (QUIC)
//! flotilla-hub: mqtt listening on 127.0.0.1:1884
//! ```
//! (with an external broker the last line is `flotilla-hub: mqtt broker
//! HOST:PORT (external)`).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use anyhow::Context;
pub use flotilla_net::signal::shutdown_signal;

use crate::api::{self, types::Role, AppState};
use crate::audit::AuditDraft;
use crate::blobs::{FsChunks, UploadFiles};
use crate::config::HubConfig;
use crate::events::EventBus;
use crate::keystore;
use crate::registry::{Registry, RegistryLimits};
use crate::store::{RedbStore, RegistryStore, TokenRecord};
use crate::sync::SyncServer;
use crate::telemetry::Telemetry;

/// Longest interval between two checks whether the timestamp needs re-signing
/// (it is re-signed at half its lifetime; short lifetimes check more often).
pub const TRUST_REFRESH_CHECK: std::time::Duration = std::time::Duration::from_secs(3600);

/// How often to check for re-signing, given the timestamp lifetime.
pub fn trust_refresh_interval(timestamp_secs: i64) -> std::time::Duration {
    std::time::Duration::from_secs((timestamp_secs / 4).max(1) as u64).min(TRUST_REFRESH_CHECK)
}

/// A hub ready to serve: its listeners are bound.
#[derive(Debug)]
pub struct Hub {
    /// The address the API listens on.
    pub api_addr: SocketAddr,
    /// The UDP address the QUIC sync endpoint listens on.
    pub sync_addr: SocketAddr,
    listener: tokio::net::TcpListener,
    router: axum::Router,
    sync: SyncServer,
    // Test fault: never re-sign the timestamp (a hub whose timestamp key is gone).
    freeze_timestamp: bool,
    /// The registry (for in-process users such as tests and later services).
    pub registry: Arc<Registry>,
    /// The telemetry side (broker, ingest, events, alerts).
    pub telemetry: Arc<Telemetry>,
    // Subscribed before anything could publish, for the event log.
    bus: tokio::sync::broadcast::Receiver<crate::events::Event>,
}

/// Prepares the data directory, keys, store and listener.
pub async fn start(config: &HubConfig) -> anyhow::Result<Hub> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("securing {}", config.data_dir.display()))?;
    if !config.keys_dir.join("root.json").exists() {
        keystore::init(&config.keys_dir, 1, 1, crate::now())?;
        eprintln!(
            "WARNING: created new signing keys in {} for a first start. Fine for trying Flotilla; in production create \
             them with `flotilla keys init` on an offline machine and give the hub only online/ and root.json.",
            config.keys_dir.display()
        );
    }
    let keys = keystore::load_online(&config.keys_dir)?;
    let roots = keystore::root_chain(&config.keys_dir)?;

    let store: Arc<dyn RegistryStore> =
        Arc::new(RedbStore::open(&config.data_dir.join("hub.redb"))?);
    let chunks = Arc::new(FsChunks::open(&config.data_dir.join("chunks"))?);
    let uploads = UploadFiles::open(&config.data_dir.join("uploads"))?;
    bootstrap_admin(store.as_ref(), config)?;
    let ca = crate::devices::ca::DeviceCa::load_or_create(&config.data_dir.join("ca"))?;

    let mut registry = Registry::new(
        store,
        chunks,
        uploads,
        keys,
        ca,
        EventBus::default(),
        RegistryLimits {
            max_upload_bytes: config.max_upload_bytes,
            max_pending_uploads: config.max_pending_uploads,
        },
    );
    registry.set_timestamp_expiry(config.timestamp_expiry_secs);
    let registry = Arc::new(registry);
    registry.load_device_certs()?;
    let stale = registry.mark_all_offline()?;
    if stale > 0 {
        tracing::info!(devices = stale, "marked devices offline after a restart");
    }
    let bus = registry.events().subscribe();
    let telemetry = Telemetry::open(config, registry.clone()).await?;
    let roots = Arc::new(roots);
    let hint = flotilla_protocol::wire::enrol::TelemetryHint {
        mqtt_addr: telemetry.mqtt_addr.clone(),
        fleet: telemetry.fleet.clone(),
        tls: telemetry.mqtt_tls,
    };
    let sync = SyncServer::bind(
        &config.sync,
        config.faults,
        registry.clone(),
        roots.clone(),
        Some(hint),
    )?;
    let state = AppState {
        registry: registry.clone(),
        roots,
        max_patch_bytes: config.max_patch_bytes,
        sync_addr: sync.advertised().to_string(),
        telemetry: telemetry.clone(),
    };
    let router = api::router(state, config.max_json_bytes);
    let listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("binding the API to {}", config.api_listen))?;
    let api_addr = listener.local_addr()?;
    Ok(Hub {
        api_addr,
        sync_addr: sync.local_addr(),
        listener,
        router,
        sync,
        freeze_timestamp: config.faults.freeze_timestamp,
        registry,
        telemetry,
        bus,
    })
}

/// Creates the first admin token when no token exists.
fn bootstrap_admin(store: &dyn RegistryStore, config: &HubConfig) -> anyhow::Result<()> {
    if !store.tokens()?.is_empty() {
        return Ok(());
    }
    let token =
        crate::tokens::generate().map_err(|_| anyhow::anyhow!("random number generator failed"))?;
    let now = crate::now().to_string();
    store.create_token(
        &crate::tokens::hash(&token),
        TokenRecord {
            name: "admin".into(),
            role: Role::Admin,
            created_at: now.clone(),
        },
        AuditDraft::new(
            "hub",
            "token.create",
            "token/admin",
            "first start: initial admin token",
        ),
        &now,
    )?;
    let path = config.data_dir.join("admin-token");
    keystore::write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)?;
    eprintln!(
        "created the initial admin token in {} (mode 0600)",
        path.display()
    );
    Ok(())
}

impl Hub {
    /// Serves the API and QUIC sync until `shutdown` completes, then finishes
    /// in-flight requests and closes agent connections.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.api_addr, "API listening");
        let telemetry_tasks = self.telemetry.spawn(self.bus)?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let sync = tokio::spawn(self.sync.serve(stopped.clone()));
        let trigger = tokio::spawn(async move {
            shutdown.await;
            let _ = stop.send(true);
        });
        let mut api_stopped = stopped;
        let api_shutdown = async move {
            let _ = api_stopped.wait_for(|s| *s).await;
        };
        let registry = self.registry.clone();
        let every = trust_refresh_interval(registry.timestamp_expiry_secs());
        let frozen = self.freeze_timestamp;
        let refresher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if frozen {
                    continue;
                }
                let r = registry.clone();
                match tokio::task::spawn_blocking(move || r.refresh_trust_if_due(crate::now()))
                    .await
                {
                    Ok(Ok(true)) => {
                        tracing::info!("re-signed snapshot and timestamp before expiry")
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "could not refresh trust metadata"),
                    Err(e) => tracing::error!(error = %e, "trust refresh task failed"),
                }
            }
        });
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(api_shutdown)
            .await;
        refresher.abort();
        drop(telemetry_tasks);
        // Dropping the trigger drops the sender: the sync endpoint stops too.
        trigger.abort();
        if let Err(e) = sync.await {
            tracing::error!(error = %e, "QUIC sync task failed");
        }
        served?;
        tracing::info!("hub stopped");
        Ok(())
    }
}
