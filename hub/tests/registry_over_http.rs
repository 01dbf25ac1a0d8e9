//! The hub's registry over real HTTP: a `flotilla-hub` process per test on an
//! ephemeral port, driven as scripts and the CLI drive it.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};

use flotilla_protocol::digest::Sha256Digest;
use support::*;

#[test]
fn a_registered_model_is_signed_searchable_and_downloads_intact() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path());
    let c = hub.client(&hub.admin);
    let m = model(1);
    let id = c.upload("fraud.onnx", &m);
    let (s, v) = c.register(
        "fraud",
        serde_json::json!({"upload": id, "tags": {"stage": "prod"}, "metrics": {"auc": 0.93},
            "description": "first", "reason": "initial", "lineage": {"source_run": "run-1"}}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["version"], 1);
    assert_eq!(
        v["sha256"],
        Sha256Digest::of(&m).to_hex(),
        "the hub computes the digest itself"
    );
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!(["batch", "256"]));
    assert_eq!(v["target"], "models/fraud/1/manifest.cbor");

    assert_eq!(c.bytes("/api/v1/models/fraud/versions/1/file"), m);
    let (_, page) = c.get("/api/v1/models?tag=stage%3Dprod&metric=auc%3E%3D0.9");
    assert_eq!(page["items"][0]["name"], "fraud");
    let (_, page) = c.get("/api/v1/models?metric=auc%3E0.95");
    assert_eq!(page["items"].as_array().unwrap().len(), 0);

    // The manifest is a TUF target the fleet's root vouches for.
    let root = c.bytes("/api/v1/trust/root.json");
    let trusted =
        flotilla_protocol::tuf::TrustedSet::from_trusted_root(&root, &Default::default()).unwrap();
    let now = flotilla_hub::now();
    let trusted = flotilla_protocol::tuf::Updater::run(trusted, now, Default::default(), |f| {
        let path = match f {
            flotilla_protocol::tuf::Fetch::Root { version, .. } => format!("{version}.root.json"),
            flotilla_protocol::tuf::Fetch::Timestamp { .. } => "timestamp.json".into(),
            flotilla_protocol::tuf::Fetch::Snapshot { .. } => "snapshot.json".into(),
            flotilla_protocol::tuf::Fetch::Targets { .. } => "targets.json".into(),
        };
        let (s, _) = c.get(&format!("/api/v1/trust/{path}"));
        (s == 200).then(|| c.bytes(&format!("/api/v1/trust/{path}")))
    })
    .unwrap();
    let manifest = c.bytes("/api/v1/models/fraud/versions/1/manifest");
    trusted
        .verify_target("models/fraud/1/manifest.cbor", &manifest)
        .unwrap();
    let manifest =
        flotilla_protocol::manifest::BundleManifest::decode(&manifest, &Default::default())
            .unwrap();
    assert_eq!(manifest.files[0].sha256, Sha256Digest::of(&m));
    // Every chunk lists the BLAKE3 agents verify it by, of its own bytes.
    let mut at = 0usize;
    for c in &manifest.files[0].chunks {
        let bytes = &m[at..at + c.size as usize];
        assert_eq!(c.digest, Sha256Digest::of(bytes));
        assert_eq!(
            c.blake3,
            Some(flotilla_protocol::digest::Blake3Digest::of(bytes))
        );
        at += c.size as usize;
    }
    assert_eq!(at, m.len());
    assert_eq!(manifest.lineage.source_run.as_deref(), Some("run-1"));
}

#[test]
fn concurrent_registrations_of_one_name_get_distinct_consecutive_versions() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path());
    let n = 6u64;
    let versions: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let c = hub.client(&hub.admin);
                s.spawn(move || {
                    let id = c.upload("m.onnx", &model(100 + i));
                    let (st, v) = c.register("race", serde_json::json!({"upload": id}));
                    assert_eq!(st, 201, "{v}");
                    v["version"].as_u64().unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = versions.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=n).collect::<Vec<_>>(), "{versions:?}");
    let (_, m) = hub.client(&hub.admin).get("/api/v1/models/race");
    assert_eq!(m["latest_version"], n);
}

#[test]
fn an_upload_cut_mid_way_resumes_and_yields_the_same_digest() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path());
    let c = hub.client(&hub.admin);
    let m = model(7);
    let (_, st) = c.send(
        "POST",
        "/api/v1/uploads",
        serde_json::json!({"file_name": "m.onnx", "size": m.len()}),
    );
    let id = st["id"].as_str().unwrap().to_string();
    let half = m.len() / 2;
    assert_eq!(c.patch(&id, 0, &m[..half]).0, 200);

    // A PATCH whose connection dies after a third of its body.
    let addr = hub.url.trim_start_matches("http://").to_string();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    let rest = &m[half..];
    write!(
        sock,
        "PATCH /api/v1/uploads/{id} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nUpload-Offset: {half}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        hub.admin,
        rest.len()
    )
    .unwrap();
    sock.write_all(&rest[..rest.len() / 3]).unwrap();
    drop(sock);
    std::thread::sleep(std::time::Duration::from_millis(300));

    // The hub acknowledges only what it durably received; the client resumes there.
    let (_, st) = c.get(&format!("/api/v1/uploads/{id}"));
    let offset = st["offset"].as_u64().unwrap() as usize;
    assert_eq!(offset, half, "a cut request must not move the offset");
    let (s, b) = c.patch(&id, 0, &m[..10]);
    assert_eq!(s, 409, "a wrong offset is refused: {b}");
    assert!(b["detail"]
        .as_str()
        .unwrap()
        .contains(&format!("continue from {half}")));
    assert_eq!(c.patch(&id, offset as u64, &m[offset..]).0, 200);
    let (s, v) = c.register("resumed", serde_json::json!({"upload": id}));
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["sha256"], Sha256Digest::of(&m).to_hex());
    assert_eq!(c.bytes("/api/v1/models/resumed/versions/1/file"), m);
}

#[test]
fn a_second_version_reuses_chunks_and_deleting_the_first_keeps_the_second_whole() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path());
    let c = hub.client(&hub.admin);
    let v1 = flotilla_runtime::generate::mlp(&[1024, 2048, 2048, 1024, 10], 3);
    let v2 = flotilla_runtime::generate::with_replaced_initializer(&v1, "fc3.weight", 4).unwrap();
    let (_, a) = c.register(
        "cdc",
        serde_json::json!({"upload": c.upload("m.onnx", &v1)}),
    );
    let (s, b) = c.register(
        "cdc",
        serde_json::json!({"upload": c.upload("m.onnx", &v2), "lineage": {"parent_version": 1}}),
    );
    assert_eq!(s, 201, "{b}");
    let (chunks, reused) = (
        b["chunks"].as_u64().unwrap(),
        b["chunks_reused"].as_u64().unwrap(),
    );
    assert!(
        reused * 10 >= chunks * 9,
        "v2 reuses {reused} of {chunks} chunks"
    );
    assert_eq!(a["chunks_reused"], 0);

    let (s, _) = c.send(
        "DELETE",
        "/api/v1/models/cdc/versions/1",
        serde_json::json!({"reason": "superseded"}),
    );
    assert_eq!(s, 204);
    assert_eq!(c.get("/api/v1/models/cdc/versions/1").0, 404);
    assert_eq!(
        c.bytes("/api/v1/models/cdc/versions/2/file"),
        v2,
        "shared chunks survive the delete"
    );
    let targets: serde_json::Value =
        serde_json::from_slice(&c.bytes("/api/v1/trust/targets.json")).unwrap();
    let listed = &targets["signed"]["targets"];
    assert!(
        listed.get("models/cdc/1/manifest.cbor").is_none(),
        "a deleted version is no longer a signed target"
    );
    assert!(listed.get("models/cdc/2/manifest.cbor").is_some());
    // A new version after a delete still gets the next number, never a reused one.
    let (_, b) = c.register(
        "cdc",
        serde_json::json!({"upload": c.upload("m.onnx", &v1)}),
    );
    assert_eq!(b["version"], 3);
}

#[test]
fn viewer_tokens_read_but_cannot_mutate() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path());
    let admin = hub.client(&hub.admin);
    let (s, t) = admin.send(
        "POST",
        "/api/v1/tokens",
        serde_json::json!({"name": "grafana", "role": "viewer"}),
    );
    assert_eq!(s, 201, "{t}");
    let viewer = hub.client(t["token"].as_str().unwrap());
    assert_eq!(viewer.get("/api/v1/models").0, 200);
    let (s, p) = viewer.send(
        "POST",
        "/api/v1/uploads",
        serde_json::json!({"file_name": "m.onnx", "size": 10}),
    );
    assert_eq!(s, 403);
    assert!(p["detail"].as_str().unwrap().contains("viewer"), "{p}");
    assert_eq!(
        viewer
            .send(
                "POST",
                "/api/v1/tokens",
                serde_json::json!({"name": "x", "role": "admin"})
            )
            .0,
        403
    );
    let (_, stored) = admin.get("/api/v1/tokens");
    assert!(
        stored
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["token"].is_null()),
        "secrets are never listed"
    );
    assert_eq!(
        admin
            .send("DELETE", "/api/v1/tokens/grafana", serde_json::Value::Null)
            .0,
        204
    );
    assert_eq!(
        viewer.get("/api/v1/models").0,
        401,
        "a revoked token is refused"
    );
    assert_eq!(hub.client("flt_nonsense").get("/api/v1/models").0, 401);
}

#[test]
fn bad_input_gets_a_clear_4xx_and_leaves_no_partial_state() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path());
    let c = hub.client(&hub.admin);
    let detail = |a: &Answer| a.1["detail"].as_str().unwrap_or_default().to_string();

    let a = c.send_raw(
        "POST",
        "/api/v1/uploads",
        "application/json",
        b"{\"file_name\": ",
    );
    assert_eq!(a.0, 400);
    assert!(detail(&a).contains("malformed JSON"), "{}", detail(&a));
    let a = c.send(
        "POST",
        "/api/v1/uploads",
        serde_json::json!({"file_name": "m.onnx", "size": 3, "sise": 4}),
    );
    assert_eq!(a.0, 400);
    assert!(detail(&a).contains("unknown field"), "{}", detail(&a));
    for bad in [
        "../../etc/passwd",
        "/abs/model.onnx",
        "dir/model.onnx",
        "..",
    ] {
        let a = c.send(
            "POST",
            "/api/v1/uploads",
            serde_json::json!({"file_name": bad, "size": 3}),
        );
        assert_eq!(a.0, 400, "{bad}");
    }
    let big = vec![b' '; 2 << 20];
    assert_eq!(c.status_of_early_refusal("/api/v1/uploads", &big), 413);
    let a = c.send(
        "POST",
        "/api/v1/uploads",
        serde_json::json!({"file_name": "m.onnx", "size": 1u64 << 50}),
    );
    assert_eq!(a.0, 413);
    assert_eq!(c.get("/api/v1/models?tag=novalue").0, 400);
    assert_eq!(c.get("/api/v1/models?metric=auc~3").0, 400);
    assert_eq!(c.get("/api/v1/models?colour=red").0, 400);

    // A file that is not ONNX: refused, no model, no version, no chunks.
    let id = c.upload(
        "notes.onnx",
        b"these are not the weights you are looking for",
    );
    let a = c.register("junk", serde_json::json!({"upload": id}));
    assert_eq!(a.0, 400);
    assert!(
        detail(&a).contains("not a usable ONNX model"),
        "{}",
        detail(&a)
    );
    assert_eq!(c.get("/api/v1/models/junk").0, 404);
    let chunk_files = walk(&hub.data.join("chunks"));
    assert_eq!(chunk_files, 0, "no chunk stored for a refused model");

    let id = c.upload("m.onnx", &model(5));
    for body in [
        serde_json::json!({"upload": id, "tags": {"bad key": "x"}}),
        serde_json::json!({"upload": id, "metrics": {"auc": "high"}}),
        serde_json::json!({"upload": id, "lineage": {"parent_version": 9}}),
        serde_json::json!({"upload": id, "colour": "red"}),
    ] {
        let a = c.register("fraud", body.clone());
        assert_eq!(a.0, 400, "{body}: {}", a.1);
    }
    assert_eq!(
        c.register("bad/name", serde_json::json!({"upload": id})).0,
        404,
        "a slash is not a model name route"
    );
    assert_eq!(
        c.register(".hidden", serde_json::json!({"upload": id})).0,
        400
    );
    assert_eq!(
        c.get("/api/v1/models/fraud").0,
        404,
        "refused registrations leave no model behind"
    );
    // The same upload still registers once the request is right.
    assert_eq!(
        c.register("fraud", serde_json::json!({"upload": id})).0,
        201
    );

    let incomplete = {
        let (_, st) = c.send(
            "POST",
            "/api/v1/uploads",
            serde_json::json!({"file_name": "m.onnx", "size": 100}),
        );
        st["id"].as_str().unwrap().to_string()
    };
    let a = c.register("fraud", serde_json::json!({"upload": incomplete}));
    assert_eq!(a.0, 409);
    assert!(detail(&a).contains("incomplete"), "{}", detail(&a));
    assert_eq!(
        c.patch(&incomplete, 0, &[0u8; 101]).0,
        413,
        "more bytes than declared are refused"
    );
    assert_eq!(c.get("/api/v1/nowhere").0, 404);
    let (s, _) = hub.client("").get("/api/v1/models");
    assert_eq!(s, 401);
}

fn walk(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn audit_tampering_is_detected_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path());
    let c = hub.client(&hub.admin);
    for i in 0..3 {
        let id = c.upload("m.onnx", &model(20 + i));
        assert_eq!(
            c.register(
                "audited",
                serde_json::json!({"upload": id, "reason": format!("r{i}")})
            )
            .0,
            201
        );
    }
    let (_, v) = c.get("/api/v1/audit/verify");
    assert_eq!(v["ok"], true, "{v}");
    let (_, log) = c.get("/api/v1/audit?since=1");
    assert_eq!(log["items"][0]["seq"], 2);
    assert_eq!(log["items"][0]["action"], "model.register");
    assert_eq!(log["items"][0]["actor"], "admin");
    let data = hub.data.clone();
    hub.stop();

    // Edit entry 3's reason directly in the database file.
    {
        use flotilla_hub::store::redb_store::{decode, encode, AUDIT};
        use redb::{ReadableDatabase, ReadableTable};
        let db = redb::Database::create(data.join("hub.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(AUDIT).unwrap();
            let raw = t.get(3u64).unwrap().unwrap().value().to_vec();
            let mut e: flotilla_hub::api::types::AuditEntry = decode(&raw).unwrap();
            e.reason = "nothing happened".into();
            t.insert(3u64, encode(&e).unwrap().as_slice()).unwrap();
        }
        tx.commit().unwrap();
        let _ = db.begin_read();
    }
    let hub = HubProcess::start(&data);
    let (_, v) = hub.client(&hub.admin).get("/api/v1/audit/verify");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["first_bad_seq"], 3, "{v}");
}

#[test]
fn the_openapi_document_describes_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path());
    let mut body = String::new();
    ureq::get(&format!("{}/api/v1/openapi.json", hub.url))
        .call()
        .unwrap()
        .into_reader()
        .read_to_string(&mut body)
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    for path in [
        "/api/v1/uploads/{id}",
        "/api/v1/models/{name}/versions",
        "/api/v1/audit/verify",
        "/api/v1/tokens",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"].get("VersionView").is_some());
}

#[test]
fn a_reference_dataset_becomes_the_signed_drift_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path());
    let c = hub.client(&hub.admin);
    let mut csv = String::from("amount,country\n");
    for i in 0..200 {
        csv += &format!("{},{}\n", i % 50, if i % 3 == 0 { "FR" } else { "DE" });
    }
    let model_id = c.upload("m.onnx", &model(9));
    let data_id = c.upload("reference.csv", csv.as_bytes());
    let (s, v) = c.register(
        "drifty",
        serde_json::json!({"upload": model_id, "dataset_upload": data_id}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["has_drift_baseline"], true);
    let m = flotilla_protocol::manifest::BundleManifest::decode(
        &c.bytes("/api/v1/models/drifty/versions/1/manifest"),
        &Default::default(),
    )
    .unwrap();
    let b = m.drift_baseline.expect("baseline in the manifest");
    assert_eq!(b.rows, 200);
    assert_eq!(b.features.len(), 2);

    let bad_id = c.upload("reference.csv", b"a,b\n1,2\n3\n");
    let model_id = c.upload("m.onnx", &model(9));
    let (s, p) = c.register(
        "drifty",
        serde_json::json!({"upload": model_id, "dataset_upload": bad_id}),
    );
    assert_eq!(s, 400, "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("reference dataset"),
        "{p}"
    );
}
