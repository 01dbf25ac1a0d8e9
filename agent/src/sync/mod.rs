//! `flotilla-agent run`: the event loop that drives the sans-IO
//! [`Reconciler`] against the hub, the store and the filesystem.
//!
//! Design: one task owns all state ([`Agent`]); the network, trials and timers
//! talk to it through one channel of [`Event`]s. After every event the loop
//! performs the reconciler's actions in order; a `Persist` is durable (redb
//! Immediate commit) before the next action runs, which is what makes
//! activation atomic across `kill -9` (see `flotilla_protocol::reconcile`).
//!
//! Trust: every `MetadataUpdate` goes through the TUF client workflow
//! ([`Updater`]) from the trusted set persisted in the store; the director
//! document is verified against it ([`verify_director`]); manifests are fetched
//! by digest and checked against trusted targets ([`DesiredState::from_verified`]);
//! chunks are checked by the reconciler. A rejected update (rollback, expired
//! timestamp, bad signature) changes nothing: the current version keeps serving
//! and the reason shows in `flotilla-agent status`.

mod link;
pub mod status;
mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flotilla_net::tls::{sync_client_config, TransportSettings};
use flotilla_net::Backoff;
use flotilla_protocol::digest::{HashedBytes, Sha256Digest};
use flotilla_protocol::director::{verify_director, DirectorDocument};
use flotilla_protocol::limits::Limits;
use flotilla_protocol::reconcile::{
    manifest_refs, Action, DeploymentKey, DesiredState, ReconcileConfig, ReconcileError, Reconciler,
};
use flotilla_protocol::time::UtcTime;
use flotilla_protocol::tuf::{TrustedSet, Updater};
use flotilla_protocol::wire::{
    AgentHello, ChunkFrame, ControlFrame, MetadataUpdate, TrustedVersions,
};
use tokio::sync::{mpsc, watch};

use crate::config::{AgentConfig, DataFiles};
use crate::serve::{ServeConfig, Serving};
use crate::slots::{self, LoadedModel};
use crate::store::{AgentStore, TrustDocs};
use crate::telemetry::{AgentView, Publisher, TelemetryStatus};
use link::Link;
pub use status::AgentStatus;
use writer::ChunkWriter;

/// What reaches the event loop.
#[derive(Debug)]
pub(crate) enum Event {
    /// A control frame on connection `generation`.
    Control(u64, ControlFrame),
    /// A chunk-stream frame other than chunk data on connection `generation`.
    Chunk(u64, ChunkFrame),
    /// Chunk (or manifest) bytes on connection `generation`, hashed by the
    /// stream's reader.
    ChunkData(u64, Sha256Digest, HashedBytes),
    /// Connection `generation` ended.
    LinkLost(u64, String),
    /// A dial attempt finished.
    Connected(u64, Result<Link, String>),
    /// A trial finished; on success it hands over the loaded model.
    Trial {
        key: DeploymentKey,
        target: String,
        result: Result<Arc<LoadedModel>, String>,
    },
    /// A version was loaded for serving (after a restart or a rollback).
    Loaded {
        key: DeploymentKey,
        target: String,
        result: Result<Arc<LoadedModel>, String>,
    },
}

/// Events queued for the event loop before network readers wait. Bounded so
/// a hub that sends faster than the agent verifies and stores (or sends
/// unsolicited frames) is slowed by QUIC flow control instead of growing
/// memory.
const EVENT_QUEUE: usize = 256;

/// Least interval between two status.json writes caused only by chunk traffic;
/// every state change is written at once.
const STATUS_INTERVAL: Duration = Duration::from_millis(500);

/// The seconds clock the reconciler and TUF run on.
pub fn now() -> UtcTime {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    UtcTime(secs)
}

/// A director document verified and waiting for its manifests.
#[derive(Debug)]
struct PendingDesired {
    doc: DirectorDocument,
    manifests: BTreeMap<String, Vec<u8>>,
    // digest -> (target, length)
    wanted: BTreeMap<Sha256Digest, (String, u64)>,
}

/// The agent's state, owned by the event loop.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    files: DataFiles,
    limits: Limits,
    store: Arc<AgentStore>,
    /// Chunk writes, off the event loop.
    writer: ChunkWriter,
    trusted: TrustedSet,
    docs: TrustDocs,
    director: Option<DirectorDocument>,
    reconciler: Reconciler,
    pending: Option<PendingDesired>,
    /// What each deployment must serve (the reconciler's active versions).
    serving: BTreeMap<DeploymentKey, String>,
    /// What the scoring server holds now.
    loaded: BTreeMap<DeploymentKey, String>,
    scoring: Arc<Serving>,
    link: Option<Link>,
    generation: u64,
    dialling: bool,
    next_dial: tokio::time::Instant,
    backoff: Backoff,
    outstanding: BTreeSet<Sha256Digest>,
    last_error: Option<String>,
    fetched_bytes: u64,
    fetch_started: Option<(std::time::Instant, u64)>,
    last_fetch: Option<status::FetchRun>,
    tx: mpsc::Sender<Event>,
    rx: Option<mpsc::Receiver<Event>>,
    /// Something other than chunk traffic changed since status.json was written.
    status_changed: bool,
    status_written: Option<std::time::Instant>,
    /// The agent's state for telemetry windows.
    view: watch::Sender<AgentView>,
    /// The telemetry publisher's state, once it runs.
    telemetry: Option<Arc<std::sync::Mutex<TelemetryStatus>>>,
    /// Notified when the telemetry status changes.
    telemetry_changed: Arc<tokio::sync::Notify>,
    /// The scoring API's bound address.
    scoring_addr: Option<SocketAddr>,
    /// Print the scoring address on stdout once bound.
    announce: bool,
}

impl Agent {
    /// Opens the store and restores trust and the reconciler from it.
    pub fn open(config: AgentConfig) -> anyhow::Result<Self> {
        let files = config.files();
        let limits = Limits::default();
        let store = Arc::new(AgentStore::open(&files.store())?);
        let docs = match store.load_trust()? {
            Some(d) => d,
            None => {
                let root = std::fs::read(files.root()).with_context(|| {
                    format!("reading the pinned root {}", files.root().display())
                })?;
                TrustDocs {
                    root,
                    timestamp: None,
                    snapshot: None,
                    targets: None,
                    director: None,
                }
            }
        };
        let trusted = TrustedSet::restore(
            &docs.root,
            docs.timestamp.as_deref(),
            docs.snapshot.as_deref(),
            docs.targets.as_deref(),
            &limits,
        )
        .context("the trusted metadata in the store does not verify")?;
        let rc = ReconcileConfig {
            trial_timeout_secs: config.sync.trial_timeout_secs as i64,
            ..ReconcileConfig::default()
        };
        let reconciler = match store.load_record()? {
            Some(record) => Reconciler::restore(&record, rc, limits, now())
                .context("the agent record in the store cannot be restored")?,
            None => Reconciler::new(rc, limits),
        };
        // The director was verified before it was stored; its body is re-read
        // without an expiry check (expiry stops updates, not serving).
        let director = docs.director.as_deref().and_then(|raw| {
            verify_director(raw, &trusted, &config.device_id, None, UtcTime(0), &limits).ok()
        });
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let backoff = Backoff::new(
            Duration::from_millis(config.sync.reconnect_min_ms),
            Duration::from_millis(config.sync.reconnect_max_ms),
        );
        let writer = ChunkWriter::start(Arc::clone(&store)).context("starting the chunk writer")?;
        Ok(Self {
            config,
            files,
            limits,
            writer,
            store,
            trusted,
            docs,
            director,
            reconciler,
            pending: None,
            serving: BTreeMap::new(),
            loaded: BTreeMap::new(),
            scoring: Serving::new(ServeConfig::default()),
            link: None,
            generation: 0,
            dialling: false,
            next_dial: tokio::time::Instant::now(),
            backoff,
            outstanding: BTreeSet::new(),
            last_error: None,
            fetched_bytes: 0,
            fetch_started: None,
            last_fetch: None,
            tx,
            rx: Some(rx),
            status_changed: true,
            status_written: None,
            view: watch::channel(AgentView::default()).0,
            telemetry: None,
            telemetry_changed: Arc::new(tokio::sync::Notify::new()),
            scoring_addr: None,
            announce: true,
        })
    }

    /// Whether `run` prints the scoring address on stdout (default: yes;
    /// an embedding program reads it from the status instead).
    pub fn set_announce(&mut self, on: bool) {
        self.announce = on;
    }

    fn client_config(&self) -> anyhow::Result<quinn::ClientConfig> {
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        let der = |text: String, what: &str| -> anyhow::Result<Vec<u8>> {
            Ok(pem::parse(text)
                .with_context(|| format!("{what} is not PEM"))?
                .into_contents())
        };
        let ca = der(read(self.files.hub_ca())?, "hub-ca.pem")?;
        let cert = der(read(self.files.cert())?, "device.pem")?;
        let key = der(read(self.files.key())?, "device-key.pem")?;
        Ok(sync_client_config(
            ca.into(),
            vec![cert.into()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.into()),
            &TransportSettings::default(),
        )?)
    }

    fn hello(&self) -> AgentHello {
        AgentHello {
            device_id: self.config.device_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            inventory: crate::inventory::inventory(),
            state: self.reconciler.statuses(),
            trusted: self.trusted_versions(),
        }
    }

    fn trusted_versions(&self) -> TrustedVersions {
        TrustedVersions {
            root: self.trusted.root().body.version,
            timestamp: self.trusted.timestamp().map(|t| t.body.version),
            snapshot: self.trusted.snapshot().map(|t| t.body.version),
            targets: self.trusted.targets().map(|t| t.body.version),
            director: self.director.as_ref().map(|d| d.version),
        }
    }

    /// Runs until `shutdown` completes or the store fails.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut events = self.rx.take().context("the agent's event loop runs once")?;
        flotilla_net::tls::install_default_provider();
        let client = self.client_config()?;
        let addr: SocketAddr = crate::config::resolve(&self.config.hub.addr).await?;
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let endpoint = flotilla_net::udp::endpoint(bind, None).context("opening a UDP socket")?;
        tracing::info!(device = %self.config.device_id, hub = %addr, "agent starting");
        let (stop_scoring, scoring_stopped) = tokio::sync::oneshot::channel::<()>();
        let (scoring_addr, scoring) =
            crate::serve::bind(self.scoring.clone(), self.config.serve.listen, async move {
                let _ = scoring_stopped.await;
            })
            .await
            .with_context(|| format!("binding the scoring API to {}", self.config.serve.listen))?;
        if self.announce {
            println!("scoring listening on http://{scoring_addr}");
        }
        self.scoring_addr = Some(scoring_addr);
        let scoring = tokio::spawn(scoring);
        let (stop_telemetry, telemetry_stopped) = tokio::sync::oneshot::channel::<()>();
        let telemetry = self.start_telemetry(async move {
            let _ = telemetry_stopped.await;
        });
        if let Some(doc) = &self.director {
            self.scoring.set_routes(&doc.endpoints);
        }
        // Resume from the record: re-derive the desired state from the stored
        // director if the record is behind it, then act.
        self.resume_director(now());
        self.perform().await?;
        self.write_status();
        tokio::pin!(shutdown);
        let telemetry_changed = Arc::clone(&self.telemetry_changed);
        loop {
            if self.link.is_none()
                && !self.dialling
                && tokio::time::Instant::now() >= self.next_dial
            {
                self.dial(&endpoint, &client, addr);
            }
            let timeout = self
                .reconciler
                .poll_timeout()
                .map(|t| {
                    let secs = (t.0 - now().0).max(0) as u64;
                    tokio::time::Instant::now() + Duration::from_secs(secs)
                })
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            let wake = if self.link.is_none() && !self.dialling {
                timeout.min(self.next_dial)
            } else {
                timeout
            };
            tokio::select! {
                () = &mut shutdown => break,
                ev = events.recv() => match ev {
                    Some(ev) => {
                        self.handle(ev);
                        // Take what else is ready, so chunk writes batch.
                        for _ in 0..64 {
                            match events.try_recv() {
                                Ok(ev) => self.handle(ev),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                () = telemetry_changed.notified() => self.status_changed = true,
                () = tokio::time::sleep_until(wake) => {
                    self.status_changed = true;
                    self.reconciler.handle_timeout(now());
                }
            }
            self.perform().await?;
            self.maybe_write_status();
        }
        if let Some(link) = self.link.take() {
            link.send(ControlFrame::Goodbye {
                reason: "agent shutting down".into(),
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            link.close("agent shutting down");
        }
        let _ = stop_telemetry.send(());
        if let Some(t) = telemetry {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let _ = stop_scoring.send(());
        match scoring.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "scoring server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "scoring server task failed"),
            Ok(Ok(())) => {}
        }
        endpoint.wait_idle().await;
        if let Err(e) = self.writer.flush().await {
            tracing::warn!(error = %format!("{e:#}"), "chunks of the last burst were not written");
        }
        tracing::info!("agent stopped");
        Ok(())
    }

    /// Spawns the telemetry publisher when a broker is configured; it runs
    /// until `stop` completes.
    fn start_telemetry(
        &mut self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let t = &self.config.telemetry;
        if !t.enabled || t.mqtt.is_none() {
            tracing::info!("telemetry is off (no [telemetry] mqtt broker in the configuration)");
            return None;
        }
        match Publisher::open(
            &self.config,
            Arc::clone(&self.store),
            Arc::clone(&self.scoring),
            self.view.subscribe(),
        ) {
            Ok(p) => {
                let status = p.status();
                let for_metrics = Arc::clone(&status);
                self.scoring.set_extra_metrics(Box::new(move || {
                    for_metrics
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .prometheus_text()
                }));
                self.telemetry = Some(status);
                self.telemetry_changed = p.changed();
                Some(tokio::spawn(p.run(stop)))
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "telemetry cannot start; the agent runs without it");
                self.last_error = Some(format!("telemetry: {e:#}"));
                None
            }
        }
    }

    fn dial(&mut self, endpoint: &quinn::Endpoint, client: &quinn::ClientConfig, addr: SocketAddr) {
        self.dialling = true;
        self.generation += 1;
        let generation = self.generation;
        let tx = self.tx.clone();
        let endpoint = endpoint.clone();
        let client = client.clone();
        let hello = self.hello();
        let streams = self.config.sync.chunk_streams;
        let limits = self.limits;
        tokio::spawn(async move {
            let r = link::connect(link::Dial {
                endpoint: &endpoint,
                config: client,
                addr,
                hello,
                streams,
                generation,
                limits,
                events: tx.clone(),
            })
            .await;
            let _ = tx.send(Event::Connected(generation, r)).await;
        });
    }

    fn lost(&mut self, why: String) {
        if let Some(link) = self.link.take() {
            link.close("reconnecting");
        }
        let delay = self.backoff.next_delay();
        tracing::warn!(reason = %why, retry_in_ms = delay.as_millis() as u64, "lost the hub");
        self.last_error = Some(format!("hub connection: {why}"));
        self.next_dial = tokio::time::Instant::now() + delay;
    }

    fn handle(&mut self, ev: Event) {
        if !matches!(ev, Event::Chunk(..) | Event::ChunkData(..)) {
            self.status_changed = true;
        }
        let current = |g: u64, s: &Self| s.link.as_ref().is_some_and(|l| l.generation == g);
        match ev {
            Event::Connected(g, r) => {
                self.dialling = false;
                if g != self.generation {
                    return;
                }
                match r {
                    Ok(mut link) => {
                        tracing::info!(hub = %self.config.hub.addr, "connected to the hub");
                        self.backoff.reset();
                        self.last_error = None;
                        // Whatever was in flight on the last connection is asked again.
                        let again: Vec<Sha256Digest> = self.outstanding.iter().copied().collect();
                        if !again.is_empty() {
                            link.request(again, self.limits.max_digests_per_request);
                        }
                        self.link = Some(link);
                    }
                    Err(why) => self.lost(why),
                }
            }
            Event::LinkLost(g, why) => {
                if current(g, self) {
                    self.lost(why);
                }
            }
            Event::Control(g, frame) => {
                if !current(g, self) {
                    return;
                }
                match frame {
                    ControlFrame::MetadataUpdate(u) => self.handle_metadata(&u, now()),
                    ControlFrame::Ping { nonce } => {
                        if let Some(l) = &self.link {
                            l.send(ControlFrame::Pong { nonce });
                        }
                    }
                    ControlFrame::Goodbye { reason } => {
                        self.lost(format!("hub said goodbye: {reason}"))
                    }
                    ControlFrame::Pong { .. } => {}
                    other => {
                        tracing::warn!(frame = ?std::mem::discriminant(&other), "unexpected control frame from the hub");
                    }
                }
            }
            Event::ChunkData(g, digest, bytes) => {
                if !current(g, self) {
                    return;
                }
                self.outstanding.remove(&digest);
                self.handle_chunk(digest, bytes);
            }
            Event::Chunk(g, frame) => {
                if !current(g, self) {
                    return;
                }
                // Chunk data arrives as `Event::ChunkData` (the stream
                // readers hash it); this carries every other frame.
                match frame {
                    ChunkFrame::ChunkMissing { digest } => {
                        tracing::warn!(%digest, "the hub lacks a chunk; it is asked again later");
                        self.reconciler.handle_chunk_missing(digest);
                    }
                    ChunkFrame::ChunkRequest { .. } => {
                        tracing::warn!("the hub sent a chunk request; ignored");
                    }
                    _ => {}
                }
            }
            Event::Trial {
                key,
                target,
                result,
            } => {
                let result = match result {
                    Err(reason) => {
                        tracing::warn!(deployment = %key, %target, %reason, "trial failed");
                        Err(reason)
                    }
                    Ok(model) => {
                        tracing::info!(deployment = %key, %target, "trial passed; serving it");
                        if self.serving.get(&key) == Some(&target) {
                            self.scoring.activate(&key, &target, model);
                            self.loaded.insert(key.clone(), target.clone());
                            self.status_changed = true;
                        }
                        Ok(())
                    }
                };
                if let Err(e) = self
                    .reconciler
                    .handle_trial_result(&key, &target, result, now())
                {
                    tracing::warn!(error = %e, "stale trial result ignored");
                }
            }
            Event::Loaded {
                key,
                target,
                result,
            } => match result {
                Ok(model) if self.serving.get(&key) == Some(&target) => {
                    tracing::info!(deployment = %key, %target, "loaded for serving");
                    self.scoring.activate(&key, &target, model);
                    self.loaded.insert(key, target);
                    self.status_changed = true;
                }
                Ok(_) => {}
                Err(reason) => {
                    tracing::warn!(deployment = %key, %target, %reason, "could not load for serving");
                    self.last_error = Some(format!("loading {target} for {key}: {reason}"));
                }
            },
        }
    }

    fn handle_chunk(&mut self, digest: Sha256Digest, bytes: HashedBytes) {
        if let Some(p) = &mut self.pending {
            if let Some((target, len)) = p.wanted.get(&digest).cloned() {
                if bytes.sha256() == digest && bytes.len() as u64 == len {
                    p.wanted.remove(&digest);
                    p.manifests.insert(target, bytes.into_vec());
                    if p.wanted.is_empty() {
                        self.apply_pending(now());
                    }
                } else {
                    tracing::warn!(%digest, "manifest bytes do not match their digest; asking again");
                    self.request(vec![digest]);
                }
                return;
            }
        }
        let len = bytes.len() as u64;
        match self.reconciler.handle_chunk(digest, bytes, now()) {
            Ok(true) => {
                self.fetched_bytes += len;
                if self.outstanding.is_empty() && self.reconciler.chunks_in_flight() == 0 {
                    if let Some((t, from)) = self.fetch_started.take() {
                        self.last_fetch = Some(status::FetchRun {
                            bytes: self.fetched_bytes - from,
                            secs: t.elapsed().as_secs_f64(),
                        });
                    }
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "chunk rejected; fetching it again");
                self.last_error = Some(e.to_string());
            }
        }
    }

    fn request(&mut self, digests: Vec<Sha256Digest>) {
        if self.fetch_started.is_none() {
            self.fetch_started = Some((std::time::Instant::now(), self.fetched_bytes));
        }
        self.outstanding.extend(digests.iter().copied());
        if let Some(link) = &mut self.link {
            link.request(digests, self.limits.max_digests_per_request);
        }
    }

    /// A metadata update from the hub: TUF workflow, director, manifests.
    fn handle_metadata(&mut self, u: &MetadataUpdate, now: UtcTime) {
        let base_root = self.trusted.root().body.version;
        let trusted_targets = self.docs.targets.clone();
        let updated = Updater::run(self.trusted.clone(), now, self.limits, |f| {
            u.answer(f, base_root, trusted_targets.as_deref())
                .map(<[u8]>::to_vec)
        });
        let trusted = match updated {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "metadata update rejected; the current version keeps serving");
                self.last_error = Some(format!("metadata update rejected: {e}"));
                return;
            }
        };
        let mut docs = TrustDocs {
            root: u
                .roots
                .last()
                .map(|r| r.as_slice().to_vec())
                .unwrap_or_else(|| self.docs.root.clone()),
            timestamp: Some(u.timestamp.as_slice().to_vec()),
            snapshot: Some(u.snapshot.as_slice().to_vec()),
            targets: u
                .targets
                .as_ref()
                .map(|t| t.as_slice().to_vec())
                .or_else(|| self.docs.targets.clone()),
            director: self.docs.director.clone(),
        };
        let mut director = self.director.clone();
        if let Some(raw) = &u.director {
            let known = self.director.as_ref().map(|d| d.version);
            match verify_director(
                raw.as_slice(),
                &trusted,
                &self.config.device_id,
                known,
                now,
                &self.limits,
            ) {
                Ok(doc) => {
                    docs.director = Some(raw.as_slice().to_vec());
                    director = Some(doc);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "director document rejected");
                    self.last_error = Some(format!("director document rejected: {e}"));
                }
            }
        }
        if let Err(e) = self.store.save_trust(&docs) {
            tracing::error!(error = %e, "could not persist trusted metadata");
            self.last_error = Some(format!("store: {e}"));
            return;
        }
        self.trusted = trusted;
        self.docs = docs;
        self.director = director;
        if let Some(e) = &self.last_error {
            if !e.starts_with("director document rejected") && !e.starts_with("chunk") {
                self.last_error = None;
            }
        }
        self.resume_director(now);
    }

    /// Brings the reconciler up to the trusted director document, fetching
    /// the manifests it lacks first.
    fn resume_director(&mut self, now: UtcTime) {
        let Some(doc) = self.director.clone() else {
            return;
        };
        if self.reconciler.director_version() == Some(doc.version) && self.pending.is_none() {
            return;
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.doc.version == doc.version)
        {
            return;
        }
        let refs = match manifest_refs(&doc) {
            Ok(r) => r,
            Err(e) => {
                self.last_error = Some(format!("director document: {e}"));
                return;
            }
        };
        let mut pending = PendingDesired {
            doc,
            manifests: BTreeMap::new(),
            wanted: BTreeMap::new(),
        };
        for r in refs {
            match self.reconciler.manifest_bytes(&r.target) {
                Some(b) if Sha256Digest::of(b) == r.sha256 => {
                    pending.manifests.insert(r.target, b.to_vec());
                }
                _ => {
                    pending.wanted.insert(r.sha256, (r.target, r.length));
                }
            }
        }
        let wanted: Vec<Sha256Digest> = pending.wanted.keys().copied().collect();
        self.pending = Some(pending);
        if wanted.is_empty() {
            self.apply_pending(now);
        } else {
            self.request(wanted);
        }
    }

    fn apply_pending(&mut self, now: UtcTime) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let desired =
            match DesiredState::from_verified(&p.doc, &p.manifests, &self.trusted, &self.limits) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "desired state rejected");
                    self.last_error = Some(format!("desired state rejected: {e}"));
                    return;
                }
            };
        match self.reconciler.handle_desired(desired, now) {
            Ok(()) => {
                tracing::info!(director_version = p.doc.version, "new desired state");
                self.scoring.set_routes(&p.doc.endpoints);
            }
            Err(ReconcileError::StaleDesired { .. }) => {}
            Err(e) => self.last_error = Some(format!("desired state: {e}")),
        }
    }

    /// Performs the reconciler's actions in order. Chunk writes go to the
    /// [`ChunkWriter`], flushed before any action that reads the store or
    /// persists the record.
    async fn perform(&mut self) -> anyhow::Result<()> {
        let mut writes: Vec<(Sha256Digest, HashedBytes)> = Vec::new();
        // Versions made active by this batch: a version on trial is served
        // once its trial passes (the trial loads it); any other is loaded now.
        let mut activated: Vec<(DeploymentKey, String)> = Vec::new();
        let mut on_trial: BTreeSet<(DeploymentKey, String)> = BTreeSet::new();
        while let Some(action) = self.reconciler.poll_action() {
            let now = now();
            match action {
                Action::WriteChunk { digest, bytes } => {
                    writes.push((digest, bytes));
                    continue;
                }
                Action::QueryStore { .. } | Action::FetchChunks { .. } => {}
                _ => self.status_changed = true,
            }
            self.writer.write(&mut writes).await?;
            // Requests and reports neither read the store nor need the
            // writes durable; everything else waits for them.
            if !matches!(action, Action::FetchChunks { .. } | Action::Report(_)) {
                self.writer.flush().await?;
            }
            match action {
                Action::QueryStore { digests } => {
                    let (present, absent) = self.store.has_chunks(&digests)?;
                    self.reconciler.handle_store_answer(&present, &absent, now);
                }
                Action::FetchChunks { digests } => self.request(digests),
                Action::Stage { key, slot } => {
                    let store = self.store.clone();
                    let root = self.files.deployments();
                    let k = key.clone();
                    let s = slot.clone();
                    let staged = tokio::task::spawn_blocking(move || {
                        slots::stage(&root, &k, &s, &store).map_err(|e| e.to_string())
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("staging task failed: {e}")));
                    match staged {
                        Ok(dir) => {
                            tracing::info!(deployment = %key, target = slot.target(), dir = %dir.display(), "staged")
                        }
                        Err(reason) => {
                            tracing::warn!(deployment = %key, %reason, "staging failed");
                            let _ = self.reconciler.handle_action_failed(
                                &key,
                                slot.target(),
                                reason,
                                now,
                            );
                        }
                    }
                }
                Action::Activate { key, target } => {
                    tracing::info!(deployment = %key, %target, "active");
                    self.serving.insert(key.clone(), target.clone());
                    activated.push((key, target));
                }
                Action::RunTrial { key, target } => {
                    on_trial.insert((key.clone(), target.clone()));
                    self.start_trial(key, target);
                }
                Action::Commit { key, target } => {
                    tracing::info!(deployment = %key, %target, "committed");
                    self.prune(&key);
                }
                Action::RollBack {
                    key,
                    from,
                    to,
                    reason,
                } => {
                    tracing::warn!(deployment = %key, %from, to = ?to, %reason, "rolled back");
                    match to {
                        Some(t) => {
                            self.serving.insert(key.clone(), t.clone());
                            activated.push((key, t));
                        }
                        None => {
                            self.serving.remove(&key);
                            self.loaded.remove(&key);
                            self.scoring.retire(&key);
                        }
                    }
                }
                Action::Retire { key } => {
                    tracing::info!(deployment = %key, "retired");
                    self.serving.remove(&key);
                    self.loaded.remove(&key);
                    self.scoring.retire(&key);
                    if let Err(e) = slots::retire(&self.files.deployments(), &key) {
                        tracing::warn!(deployment = %key, error = %e, "could not remove retired files");
                    }
                }
                Action::Persist(record) => self.store.save_record(&record)?,
                Action::Report(status) => {
                    if let Some(l) = &self.link {
                        l.send(ControlFrame::DeploymentStatus(status));
                    }
                }
                Action::CollectGarbage { digests } => {
                    let unused: Vec<Sha256Digest> = digests
                        .into_iter()
                        .filter(|d| !self.reconciler.is_referenced(d))
                        .collect();
                    let n = self.store.remove_chunks(&unused)?;
                    tracing::debug!(removed = n, "collected unreferenced chunks");
                }
                _ => {}
            }
        }
        self.writer.write(&mut writes).await?;
        for (key, target) in activated {
            if on_trial.contains(&(key.clone(), target.clone()))
                || self.loaded.get(&key) == Some(&target)
                || self.serving.get(&key) != Some(&target)
            {
                continue;
            }
            self.load_for_serving(key, target);
        }
        Ok(())
    }

    fn load_for_serving(&self, key: DeploymentKey, target: String) {
        let manifest = match self.reconciler.active(&key) {
            Some(slot) if slot.target() == target => slot.manifest().clone(),
            _ => return,
        };
        let dir = slots::bundle_dir(&self.files.deployments(), &key, &target);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result =
                tokio::task::spawn_blocking(move || slots::load(&dir, &manifest).map(Arc::new))
                    .await
                    .unwrap_or_else(|e| Err(format!("load task failed: {e}")));
            let _ = tx
                .send(Event::Loaded {
                    key,
                    target,
                    result,
                })
                .await;
        });
    }

    fn start_trial(&mut self, key: DeploymentKey, target: String) {
        let Some(slot) = self.reconciler.active(&key).cloned() else {
            return;
        };
        let dir = slots::bundle_dir(&self.files.deployments(), &key, &target);
        let limit = Duration::from_secs(self.config.sync.trial_timeout_secs);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let manifest = slot.manifest().clone();
            let run =
                tokio::task::spawn_blocking(move || slots::trial(&dir, &manifest).map(|r| r.model));
            let result = match tokio::time::timeout(limit, run).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(format!("trial task failed: {e}")),
                Err(_) => Err(format!("trial did not finish within {}s", limit.as_secs())),
            };
            let _ = tx
                .send(Event::Trial {
                    key,
                    target,
                    result,
                })
                .await;
        });
    }

    /// Drops version directories of `key` that no slot holds any more.
    fn prune(&self, key: &DeploymentKey) {
        let record = self.reconciler.record();
        let keep: Vec<String> = record
            .deployments
            .iter()
            .filter(|d| &d.key == key)
            .flat_map(|d| {
                [&d.active, &d.staged, &d.previous]
                    .into_iter()
                    .flatten()
                    .map(|s| s.target.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        if let Err(e) = slots::prune(&self.files.deployments(), key, &keep) {
            tracing::warn!(deployment = %key, error = %e, "could not prune old versions");
        }
    }

    /// Writes status.json when state changed, or at most every
    /// [`STATUS_INTERVAL`] while only chunks are moving (a 1 GiB fetch is a
    /// thousand events; each write also reads the store's totals).
    fn maybe_write_status(&mut self) {
        let due = self
            .status_written
            .is_none_or(|t| t.elapsed() >= STATUS_INTERVAL);
        if self.status_changed || due {
            self.write_status();
            self.status_changed = false;
            self.status_written = Some(std::time::Instant::now());
        }
    }

    fn write_status(&self) {
        let s = AgentStatus {
            device_id: self.config.device_id.clone(),
            hub: self.config.hub.addr.clone(),
            connected: self.link.is_some(),
            updated_at: now().to_string(),
            pid: std::process::id(),
            last_error: self.last_error.clone(),
            trusted: self.trusted_versions(),
            deployments: self.reconciler.statuses(),
            serving: self
                .loaded
                .iter()
                .map(|(k, t)| (k.to_string(), t.clone()))
                .collect(),
            chunks: self
                .store
                .chunk_stats()
                .ok()
                .map(|(n, b)| status::ChunkStats { count: n, bytes: b }),
            fetched_bytes: self.fetched_bytes,
            last_fetch: self.last_fetch,
            scoring: self.scoring_addr.map(|a| format!("http://{a}")),
            telemetry: self.telemetry.as_ref().map(|t| {
                t.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            }),
        };
        let sync_state = if self.link.is_none() {
            "offline"
        } else if self.outstanding.is_empty() {
            "connected"
        } else {
            "syncing"
        };
        self.view.send_if_modified(|v| {
            let next = AgentView {
                sync_state: sync_state.into(),
                activations: s.deployments.clone(),
            };
            let changed = *v != next;
            *v = next;
            changed
        });
        if let Err(e) = s.write(&self.files.status()) {
            tracing::warn!(error = %e, "could not write status.json");
        }
    }
}
