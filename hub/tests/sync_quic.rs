//! The hub's QUIC endpoint against a real `flotilla-hub` process on loopback:
//! enrolment with a pinned CA fingerprint, mutual-TLS sync with pushed and
//! verifiable metadata, chunks and manifests fetched by digest, revocation
//! that closes live connections and refuses the next handshake, and a
//! malformed frame that costs only its own connection.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use flotilla_net::tls::{enrol_client_config, sync_client_config, TransportSettings};
use flotilla_net::{close, framed, FramedRecv, FramedSend, HUB_SERVER_NAME};
use flotilla_protocol::digest::Sha256Digest;
use flotilla_protocol::director::{verify_director, DirectorDocument};
use flotilla_protocol::limits::Limits;
use flotilla_protocol::manifest::BundleManifest;
use flotilla_protocol::time::UtcTime;
use flotilla_protocol::tuf::{TrustedSet, Updater};
use flotilla_protocol::wire::{
    AgentHello, ByteBuf, ChunkFrame, ControlFrame, DeploymentState, DeploymentStatus, EnrolFrame,
    Inventory, MetadataUpdate, TrustedVersions,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::*;

const WAIT: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    flotilla_net::tls::install_default_provider();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn client_endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// An enrolled device as the agent holds it.
struct Device {
    id: String,
    key: rcgen::KeyPair,
    cert: Vec<u8>,
    ca: Vec<u8>,
    root: Vec<u8>,
}

fn csr() -> (rcgen::KeyPair, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "flotilla-device");
    let der = p.serialize_request(&key).unwrap().der().to_vec();
    (key, der)
}

fn pin(fingerprint: &str) -> [u8; 32] {
    hex::decode(fingerprint).unwrap().try_into().unwrap()
}

/// One enrolment attempt over QUIC: the hub's answer, or why there was none.
async fn enrol(
    addr: SocketAddr,
    pin: [u8; 32],
    token: &str,
    csr: &[u8],
) -> Result<EnrolFrame, String> {
    let ep = client_endpoint();
    let cfg = enrol_client_config(pin, &TransportSettings::default()).unwrap();
    let conn = ep
        .connect_with(cfg, addr, HUB_SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let limits = Limits::default();
    let (mut tx, mut rx) = framed::split::<EnrolFrame, EnrolFrame>(
        conn.open_bi().await.map_err(|e| e.to_string())?,
        limits.max_agent_frame_bytes,
        limits.max_control_frame_bytes,
        limits,
    );
    tx.send(&EnrolFrame::Request {
        token: token.into(),
        csr_der: ByteBuf(csr.to_vec()),
        agent_version: "0.1.0".into(),
    })
    .await
    .map_err(|e| e.to_string())?;
    tx.finish();
    let answer = tokio::time::timeout(WAIT, rx.next())
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?
        .ok_or("stream ended")?;
    conn.close(quinn::VarInt::from_u32(close::NORMAL), b"");
    ep.wait_idle().await;
    Ok(answer)
}

fn create_token(c: &Client, labels: serde_json::Value) -> String {
    let (s, tok) = c.send(
        "POST",
        "/api/v1/devices/tokens",
        serde_json::json!({"labels": labels, "ttl_secs": 3600}),
    );
    assert_eq!(s, 201, "{tok}");
    tok["token"].as_str().unwrap().to_string()
}

fn fingerprint(c: &Client) -> String {
    let (s, info) = c.get("/api/v1/hub");
    assert_eq!(s, 200, "{info}");
    info["ca_fingerprint"].as_str().unwrap().to_string()
}

/// Enrols a device with labels `site=lyon` over QUIC.
fn enrol_device(rt: &tokio::runtime::Runtime, hub: &HubProcess) -> Device {
    let c = hub.client(&hub.admin);
    let token = create_token(&c, serde_json::json!({"site": "lyon"}));
    let (key, req) = csr();
    let answer = rt
        .block_on(enrol(hub.sync_addr, pin(&fingerprint(&c)), &token, &req))
        .unwrap();
    match answer {
        EnrolFrame::Accepted {
            device_id,
            certificate_der,
            ca_der,
            root_json,
            ..
        } => Device {
            id: device_id,
            key,
            cert: certificate_der.into_vec(),
            ca: ca_der.into_vec(),
            root: root_json.into_vec(),
        },
        other => panic!("enrolment refused: {other:?}"),
    }
}

/// Connects with the device certificate on the sync ALPN.
async fn connect(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    d: &Device,
) -> Result<quinn::Connection, String> {
    let cfg = sync_client_config(
        CertificateDer::from(d.ca.clone()),
        vec![CertificateDer::from(d.cert.clone())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(d.key.serialize_der())),
        &TransportSettings::default(),
    )
    .unwrap();
    ep.connect_with(cfg, addr, HUB_SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())
}

fn hello(device_id: &str) -> AgentHello {
    AgentHello {
        device_id: device_id.into(),
        agent_version: "0.1.0".into(),
        inventory: Inventory {
            cpus: 4,
            memory_bytes: 8 << 30,
            accelerators: Vec::new(),
        },
        state: Vec::new(),
        trusted: TrustedVersions {
            root: 1,
            timestamp: None,
            snapshot: None,
            targets: None,
            director: None,
        },
    }
}

type Control = (FramedSend<ControlFrame>, FramedRecv<ControlFrame>);

/// Opens the control stream and says hello.
async fn control(conn: &quinn::Connection, hello: AgentHello) -> Control {
    let limits = Limits::default();
    let (mut tx, rx) = framed::split::<ControlFrame, ControlFrame>(
        conn.open_bi().await.unwrap(),
        limits.max_agent_frame_bytes,
        limits.max_control_frame_bytes,
        limits,
    );
    tx.send(&ControlFrame::AgentHello(hello)).await.unwrap();
    (tx, rx)
}

/// The next metadata update on the control stream (answering pings).
async fn next_update(c: &mut Control) -> MetadataUpdate {
    loop {
        match tokio::time::timeout(WAIT, c.1.next()).await {
            Ok(Ok(Some(ControlFrame::MetadataUpdate(u)))) => return u,
            Ok(Ok(Some(ControlFrame::Ping { nonce }))) => {
                c.0.send(&ControlFrame::Pong { nonce }).await.unwrap()
            }
            Ok(Ok(Some(_))) => {}
            other => panic!("no metadata update: {other:?}"),
        }
    }
}

/// The version of the next director document pushed, verified; `targets`
/// carries the newest targets metadata seen across calls.
async fn next_director(d: &Device, c: &mut Control, targets: &mut Option<Vec<u8>>) -> u64 {
    loop {
        let u = next_update(c).await;
        if let Some(t) = &u.targets {
            *targets = Some(t.0.clone());
        }
        if let (_, Some(doc)) = verify(d, &u, targets.as_deref()) {
            return doc.version;
        }
    }
}

/// Runs the TUF workflow over an update and verifies its director document.
fn verify(
    d: &Device,
    u: &MetadataUpdate,
    trusted_targets: Option<&[u8]>,
) -> (TrustedSet, Option<DirectorDocument>) {
    let limits = Limits::default();
    let start = TrustedSet::from_trusted_root(&d.root, &limits).unwrap();
    let set = Updater::run(start, flotilla_hub::now(), limits, |f| {
        u.answer(f, 1, trusted_targets).map(<[u8]>::to_vec)
    })
    .unwrap();
    let doc = u.director.as_ref().map(|raw| {
        verify_director(
            raw.as_slice(),
            &set,
            &d.id,
            None,
            flotilla_hub::now(),
            &limits,
        )
        .unwrap()
    });
    (set, doc)
}

/// Asks for `digests` on a new chunk stream; returns the answers in order.
async fn fetch(conn: &quinn::Connection, digests: &[Sha256Digest]) -> Vec<ChunkFrame> {
    let limits = Limits::default();
    let (mut tx, mut rx) = framed::split::<ChunkFrame, ChunkFrame>(
        conn.open_bi().await.unwrap(),
        limits.max_agent_frame_bytes,
        limits.max_chunk_frame_bytes,
        limits,
    );
    tx.send(&ChunkFrame::ChunkRequest {
        digests: digests.to_vec(),
    })
    .await
    .unwrap();
    let mut out = Vec::new();
    for _ in digests {
        out.push(
            tokio::time::timeout(WAIT, rx.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    tx.finish();
    out
}

fn data(f: &ChunkFrame) -> (Sha256Digest, Option<&[u8]>) {
    match f {
        ChunkFrame::ChunkData { digest, bytes } => (*digest, Some(bytes.as_slice())),
        ChunkFrame::ChunkMissing { digest } => (*digest, None),
        other => panic!("unexpected {other:?}"),
    }
}

/// Polls the device record until `check` holds.
fn wait_device(
    c: &Client,
    id: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let (s, d) = c.get(&format!("/api/v1/devices/{id}"));
        assert_eq!(s, 200, "{d}");
        if check(&d) {
            return d;
        }
        assert!(start.elapsed() < WAIT, "device never got there: {d}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Registers a model version and points endpoint `fraud` (site=lyon) at it.
fn deploy(c: &Client, seed: u64) -> u64 {
    let version = register(c, seed);
    set_endpoint(c, version);
    version
}

/// Registers a model version of `fraud`; returns its version.
fn register(c: &Client, seed: u64) -> u64 {
    let up = c.upload("m.onnx", &model(seed));
    let (s, v) = c.register("fraud", serde_json::json!({"upload": up}));
    assert_eq!(s, 201, "{v}");
    v["version"].as_u64().unwrap()
}

/// Points endpoint `fraud` (devices labelled site=lyon) at `version`.
fn set_endpoint(c: &Client, version: u64) {
    let (s, e) = c.send(
        "PUT",
        "/api/v1/endpoints/fraud",
        serde_json::json!({"selector": {"site": "lyon"},
            "deployments": [{"name": "blue", "model": "fraud", "version": version}],
            "traffic": {"blue": 100}}),
    );
    assert_eq!(s, 200, "{e}");
}

fn closed_with(conn: &quinn::Connection) -> Option<u32> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(c) => {
            u32::try_from(c.error_code.into_inner()).ok()
        }
        _ => None,
    }
}

#[test]
fn an_address_that_keeps_failing_enrolment_is_refused_until_it_waits() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path());
    let c = hub.client(&hub.admin);
    let fp = fingerprint(&c);
    let (_key, req) = csr();
    // Ten refusals (bad tokens) are answered one by one, each about the token.
    for i in 0..10 {
        match rt
            .block_on(enrol(hub.sync_addr, pin(&fp), "flt_not-a-token", &req))
            .unwrap()
        {
            EnrolFrame::Refused { reason } => assert!(reason.contains("token"), "{i}: {reason}"),
            other => panic!("{other:?}"),
        }
    }
    // The eleventh attempt from the same address is refused before its token
    // is looked at, even a good token, and says when to retry.
    let token = create_token(&c, serde_json::json!({}));
    match rt
        .block_on(enrol(hub.sync_addr, pin(&fp), &token, &req))
        .unwrap()
    {
        EnrolFrame::Refused { reason } => {
            assert!(reason.contains("too many refused enrolments"), "{reason}");
            assert!(reason.contains("try again in"), "{reason}");
        }
        other => panic!("an address out of budget must be refused: {other:?}"),
    }
    // The good token was not spent: after one refill interval it enrols.
    std::thread::sleep(std::time::Duration::from_secs(6));
    match rt
        .block_on(enrol(hub.sync_addr, pin(&fp), &token, &req))
        .unwrap()
    {
        EnrolFrame::Accepted { .. } => {}
        other => panic!("the token should still be good: {other:?}"),
    }
}

#[test]
fn enrolment_over_quic_pins_the_ca_and_uses_each_token_once() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path());
    let c = hub.client(&hub.admin);
    let fp = fingerprint(&c);
    let token = create_token(&c, serde_json::json!({"site": "lyon"}));
    let (key, req) = csr();

    // The wrong pin: the handshake itself fails, the token is never sent.
    let mut wrong = pin(&fp);
    wrong[0] ^= 1;
    let e = rt
        .block_on(enrol(hub.sync_addr, wrong, &token, &req))
        .unwrap_err();
    assert!(e.contains("pinned") || e.contains("certificate"), "{e}");

    let answer = rt
        .block_on(enrol(hub.sync_addr, pin(&fp), &token, &req))
        .unwrap();
    let EnrolFrame::Accepted {
        device_id,
        certificate_der,
        ca_der,
        root_json,
        labels,
        telemetry,
    } = answer
    else {
        panic!("refused: {answer:?}");
    };
    // Enrolment tells the device where to publish telemetry.
    let hint = telemetry.expect("a telemetry hint");
    assert_eq!(hint.fleet, "default");
    assert!(
        hint.mqtt_addr.parse::<std::net::SocketAddr>().is_ok(),
        "{hint:?}"
    );
    assert_eq!(Sha256Digest::of(ca_der.as_slice()).to_hex(), fp);
    assert_eq!(
        labels,
        BTreeMap::from([("site".to_string(), "lyon".to_string())])
    );
    TrustedSet::from_trusted_root(root_json.as_slice(), &Limits::default()).unwrap();
    let params =
        rcgen::CertificateParams::from_ca_cert_der(&certificate_der.0.clone().into()).unwrap();
    assert!(format!("{:?}", params.distinguished_name).contains(&device_id));
    // The certificate chains to the CA: a sync handshake, which checks it
    // against the CA, succeeds.
    let device = Device {
        id: device_id.clone(),
        key,
        cert: certificate_der.0.clone(),
        ca: ca_der.0.clone(),
        root: root_json.0.clone(),
    };
    rt.block_on(async {
        let ep = client_endpoint();
        let conn = connect(&ep, hub.sync_addr, &device).await.unwrap();
        conn.close(quinn::VarInt::from_u32(close::NORMAL), b"");
        ep.wait_idle().await;
    });
    let (s, dev) = c.get(&format!("/api/v1/devices/{device_id}"));
    assert_eq!((s, dev["status"].as_str()), (200, Some("active")));
    assert_eq!(
        dev["cert_sha256"],
        Sha256Digest::of(certificate_der.as_slice()).to_hex()
    );

    // The token is used up; an unknown one is refused alike.
    for t in [token.as_str(), "flt_not-a-token"] {
        match rt
            .block_on(enrol(hub.sync_addr, pin(&fp), t, &req))
            .unwrap()
        {
            EnrolFrame::Refused { reason } => {
                assert!(reason.contains("token"), "{reason}");
                assert!(!reason.contains('\n'));
            }
            other => panic!("a used or unknown token must be refused: {other:?}"),
        }
    }
    // A bad CSR is refused and leaves the token usable.
    let token = create_token(&c, serde_json::json!({}));
    match rt
        .block_on(enrol(hub.sync_addr, pin(&fp), &token, b"not a csr"))
        .unwrap()
    {
        EnrolFrame::Refused { reason } => assert!(reason.contains("signing request"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        rt.block_on(enrol(hub.sync_addr, pin(&fp), &token, &req))
            .unwrap(),
        EnrolFrame::Accepted { .. }
    ));
}

#[test]
fn a_synced_device_gets_verifiable_pushes_manifests_and_chunks() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path());
    let c = hub.client(&hub.admin);
    let d = enrol_device(&rt, &hub);
    let ep = rt.block_on(async { client_endpoint() });
    let conn = rt.block_on(connect(&ep, hub.sync_addr, &d)).unwrap();
    let mut ctl = rt.block_on(control(&conn, hello(&d.id)));

    // Nothing is published yet: no update, but the device shows as connected.
    let quiet =
        rt.block_on(async { tokio::time::timeout(Duration::from_millis(500), ctl.1.next()).await });
    assert!(
        quiet.is_err(),
        "no update before the first publication: {quiet:?}"
    );
    let dev = wait_device(&c, &d.id, |d| d["connected"] == true);
    assert_eq!(dev["agent_version"], "0.1.0");
    assert_eq!(dev["inventory"]["cpus"], 4);

    // A model and an endpoint for site=lyon: pushed without asking.
    let version = deploy(&c, 1);
    let (set, doc, trusted_targets) = rt.block_on(async {
        let mut targets: Option<Vec<u8>> = None;
        loop {
            let u = next_update(&mut ctl).await;
            assert!(u.roots.is_empty(), "the agent trusts the only root");
            if let Some(t) = &u.targets {
                targets = Some(t.0.clone());
            }
            let (set, doc) = verify(&d, &u, targets.as_deref());
            if let Some(doc) = doc.filter(|doc| !doc.endpoints.is_empty()) {
                return (set, doc, targets);
            }
        }
    });
    assert!(trusted_targets.is_some());
    let blue = &doc.endpoints[0].deployments[0];
    assert_eq!(blue.target, format!("models/fraud/{version}/manifest.cbor"));
    assert!(set
        .targets()
        .unwrap()
        .body
        .targets
        .contains_key(&blue.target));

    // The manifest by its digest, then every chunk it lists, each hashing
    // to its digest; an unknown digest is missing.
    let manifest_digest = Sha256Digest::from_hex(&blue.sha256).unwrap();
    let answers = rt.block_on(fetch(&conn, &[manifest_digest]));
    let (digest, bytes) = data(&answers[0]);
    let bytes = bytes.expect("the manifest is served by digest");
    assert_eq!(digest, manifest_digest);
    assert_eq!(Sha256Digest::of(bytes), manifest_digest);
    let manifest = BundleManifest::decode(bytes, &Limits::default()).unwrap();
    let mut wanted: Vec<Sha256Digest> = manifest
        .files
        .iter()
        .flat_map(|f| f.chunks.iter().map(|c| c.digest))
        .collect();
    wanted.sort_by_key(|d| d.0);
    wanted.dedup();
    assert!(!wanted.is_empty());
    let unknown = Sha256Digest([7; 32]);
    wanted.push(unknown);
    let answers = rt.block_on(fetch(&conn, &wanted));
    for (want, got) in wanted.iter().zip(&answers) {
        let (digest, bytes) = data(got);
        assert_eq!(digest, *want, "answers come in request order");
        match bytes {
            Some(b) => assert_eq!(Sha256Digest::of(b), *want),
            None => assert_eq!(*want, unknown, "only the unknown digest is missing"),
        }
    }

    // Status reports are stored and shown; pings are answered.
    rt.block_on(async {
        ctl.0
            .send(&ControlFrame::DeploymentStatus(DeploymentStatus {
                endpoint: "fraud".into(),
                deployment: "blue".into(),
                target: blue.target.clone(),
                state: DeploymentState::Active,
                active: Some(blue.target.clone()),
                director_version: doc.version,
                since: UtcTime(1_800_000_000),
            }))
            .await
            .unwrap();
        ctl.0.send(&ControlFrame::Ping { nonce: 42 }).await.unwrap();
        loop {
            match tokio::time::timeout(WAIT, ctl.1.next())
                .await
                .unwrap()
                .unwrap()
            {
                Some(ControlFrame::Pong { nonce }) => {
                    assert_eq!(nonce, 42);
                    break;
                }
                Some(ControlFrame::MetadataUpdate(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    });
    let dev = wait_device(&c, &d.id, |d| d["deployments"][0]["state"] == "active");
    assert_eq!(dev["deployments"][0]["target"], blue.target.as_str());
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "--hub", &hub.url, "--token", &hub.admin, "device", "show", &d.id,
        ])
        .env_remove("FLOTILLA_OUTPUT")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        text.contains("connected") && text.contains("active"),
        "{text}"
    );

    // A new director version follows a change of desired state.
    let (s, _) = c.send(
        "PATCH",
        &format!("/api/v1/devices/{}/labels", d.id),
        serde_json::json!({"set": {"site": "paris"}, "reason": "moved"}),
    );
    assert_eq!(s, 200);
    let moved = rt.block_on(async {
        loop {
            let u = next_update(&mut ctl).await;
            let (_, doc) = verify(&d, &u, trusted_targets.as_deref());
            if let Some(doc) = doc {
                return doc;
            }
        }
    });
    assert!(moved.endpoints.is_empty() && moved.version > doc.version);

    // Leaving: the device shows as disconnected.
    conn.close(quinn::VarInt::from_u32(close::NORMAL), b"bye");
    rt.block_on(ep.wait_idle());
    wait_device(&c, &d.id, |d| d["connected"] == false);
}

#[test]
fn revoking_a_device_closes_its_connection_and_refuses_the_next_handshake() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path());
    let c = hub.client(&hub.admin);
    let d = enrol_device(&rt, &hub);
    let ep = rt.block_on(async { client_endpoint() });

    // A second connection of the same device replaces the first.
    let first = rt.block_on(connect(&ep, hub.sync_addr, &d)).unwrap();
    let _ctl1 = rt.block_on(control(&first, hello(&d.id)));
    wait_device(&c, &d.id, |d| d["connected"] == true);
    let second = rt.block_on(connect(&ep, hub.sync_addr, &d)).unwrap();
    let _ctl2 = rt.block_on(control(&second, hello(&d.id)));
    rt.block_on(async { tokio::time::timeout(WAIT, first.closed()).await.unwrap() });
    assert_eq!(closed_with(&first), Some(close::REPLACED));

    let (s, dev) = c.send(
        "POST",
        &format!("/api/v1/devices/{}/revoke", d.id),
        serde_json::json!({"reason": "stolen"}),
    );
    assert_eq!(s, 200, "{dev}");
    rt.block_on(async { tokio::time::timeout(WAIT, second.closed()).await.unwrap() });
    assert_eq!(closed_with(&second), Some(close::REVOKED));
    if let quinn::ConnectionError::ApplicationClosed(c) = second.close_reason().unwrap() {
        assert_eq!(&c.reason[..], b"device revoked");
    }

    // The next handshake is refused: either the handshake fails or the
    // connection dies before it can say hello.
    let refused = rt.block_on(async {
        match connect(&ep, hub.sync_addr, &d).await {
            Err(_) => true,
            Ok(conn) => {
                let _ = conn.open_bi().await;
                tokio::time::timeout(WAIT, conn.closed()).await.is_ok()
                    && closed_with(&conn) != Some(close::NORMAL)
            }
        }
    });
    assert!(refused, "a revoked device must not connect again");
    wait_device(&c, &d.id, |d| d["connected"] == false);
}

#[test]
fn a_malformed_frame_closes_only_its_connection() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path());
    let d = enrol_device(&rt, &hub);
    let ep = rt.block_on(async { client_endpoint() });
    rt.block_on(async {
        // Garbage after a valid length prefix, an oversized prefix, and a
        // hello naming another device: each closes its connection.
        let garbage: &[&[u8]] = &[&[0, 0, 0, 3, 0xff, 0xff, 0xff], &[0x7f, 0xff, 0xff, 0xff]];
        for bytes in garbage {
            let conn = connect(&ep, hub.sync_addr, &d).await.unwrap();
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            send.write_all(bytes).await.unwrap();
            tokio::time::timeout(WAIT, conn.closed()).await.unwrap();
            assert_eq!(closed_with(&conn), Some(close::PROTOCOL), "{bytes:?}");
        }
        let conn = connect(&ep, hub.sync_addr, &d).await.unwrap();
        let mut ctl = control(&conn, hello("dev-someone-else")).await;
        match tokio::time::timeout(WAIT, ctl.1.next()).await.unwrap() {
            Ok(Some(ControlFrame::Goodbye { .. })) | Err(_) => {}
            other => panic!("{other:?}"),
        }
        tokio::time::timeout(WAIT, conn.closed()).await.unwrap();
        assert_eq!(closed_with(&conn), Some(close::PROTOCOL));

        // The hub still serves a well-behaved connection.
        let conn = connect(&ep, hub.sync_addr, &d).await.unwrap();
        let mut ctl = control(&conn, hello(&d.id)).await;
        ctl.0.send(&ControlFrame::Ping { nonce: 7 }).await.unwrap();
        match tokio::time::timeout(WAIT, ctl.1.next()).await.unwrap() {
            Ok(Some(ControlFrame::Pong { nonce: 7 })) => {}
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn test_faults_corrupt_the_first_chunks_and_replay_the_first_director() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start_with_env(
        dir.path(),
        &[("FLOTILLA_TEST_FAULTS", "corrupt-chunks=1,replay-director")],
    );
    let c = hub.client(&hub.admin);
    let d = enrol_device(&rt, &hub);
    let ep = rt.block_on(async { client_endpoint() });
    let conn = rt.block_on(connect(&ep, hub.sync_addr, &d)).unwrap();
    let mut ctl = rt.block_on(control(&conn, hello(&d.id)));
    wait_device(&c, &d.id, |d| d["connected"] == true);
    // Director versions as pushed: the first one comes back after a newer one.
    // The first push comes with the first trust publication (the model's
    // registration) and must be taken before the endpoint changes the
    // director: a session that pushes only after both sees the newer director
    // first, and there is no older one to replay (seen under CPU load).
    let version = register(&c, 2);
    let mut targets: Option<Vec<u8>> = None;
    let mut versions = vec![rt.block_on(next_director(&d, &mut ctl, &mut targets))];
    set_endpoint(&c, version);
    while versions.len() < 3 {
        versions.push(rt.block_on(next_director(&d, &mut ctl, &mut targets)));
    }
    assert!(versions[1] > versions[0], "{versions:?}");
    assert_eq!(
        versions[2], versions[0],
        "the first director replayed: {versions:?}"
    );

    let (s, e) = c.get("/api/v1/endpoints/fraud");
    assert_eq!(s, 200);
    let version = e["deployments"][0]["version"].as_u64().unwrap();
    let (_, v) = c.get(&format!("/api/v1/models/fraud/versions/{version}"));
    let target = v["target"].as_str().unwrap().to_string();
    let (_, targets) = c.get("/api/v1/trust/targets.json");
    let digest = Sha256Digest::from_hex(
        targets["signed"]["targets"][&target]["hashes"]["sha256"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    // Manifests are never corrupted; the first chunk payload is, later ones not.
    let hash = |f: &ChunkFrame| Sha256Digest::of(data(f).1.unwrap());
    let m = rt.block_on(fetch(&conn, &[digest]));
    assert_eq!(hash(&m[0]), digest, "manifests are served intact");
    let manifest = BundleManifest::decode(data(&m[0]).1.unwrap(), &Limits::default()).unwrap();
    let chunk = manifest.files[0].chunks[0].digest;
    let first = rt.block_on(fetch(&conn, &[chunk]));
    let second = rt.block_on(fetch(&conn, &[chunk]));
    assert_ne!(
        hash(&first[0]),
        chunk,
        "the first chunk payload is corrupted"
    );
    assert_eq!(hash(&second[0]), chunk, "later payloads are intact");
}
