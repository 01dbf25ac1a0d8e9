//! Device identity at the hub over real HTTP: one-time enrolment tokens, CSR
//! signing by the device CA, labels, signed director documents that follow
//! endpoints and labels, and revocation.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod support;

use flotilla_protocol::director::verify_director;
use flotilla_protocol::tuf::{Fetch, TrustedSet, Updater};
use support::*;

fn csr_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "whatever-the-device-claims");
    p.serialize_request(&key).unwrap().pem().unwrap()
}

fn trusted(c: &Client) -> TrustedSet {
    let root = c.bytes("/api/v1/trust/root.json");
    let t = TrustedSet::from_trusted_root(&root, &Default::default()).unwrap();
    Updater::run(t, flotilla_hub::now(), Default::default(), |f| {
        let doc = match f {
            Fetch::Root { version, .. } => format!("{version}.root.json"),
            Fetch::Timestamp { .. } => "timestamp.json".into(),
            Fetch::Snapshot { .. } => "snapshot.json".into(),
            Fetch::Targets { .. } => "targets.json".into(),
        };
        (c.get(&format!("/api/v1/trust/{doc}")).0 == 200)
            .then(|| c.bytes(&format!("/api/v1/trust/{doc}")))
    })
    .unwrap()
}

#[test]
fn a_device_enrols_once_and_its_director_document_follows_endpoints_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(dir.path());
    let c = hub.client(&hub.admin);
    let (s, info) = c.get("/api/v1/hub");
    assert_eq!(s, 200);
    assert_eq!(info["sync_addr"], hub.sync_addr.to_string());
    assert_eq!(
        c.get("/api/v1/hub/info").1,
        info,
        "the old path still answers"
    );
    let fingerprint = info["ca_fingerprint"].as_str().unwrap().to_string();

    let (s, tok) = c.send(
        "POST",
        "/api/v1/devices/tokens",
        serde_json::json!({"labels": {"site": "lyon"}, "ttl_secs": 3600}),
    );
    assert_eq!(s, 201, "{tok}");
    let token = tok["token"].as_str().unwrap();
    let anonymous = hub.client("");
    let (s, enrolled) = anonymous.send(
        "POST",
        "/api/v1/enroll",
        serde_json::json!({"token": token, "csr_pem": csr_pem()}),
    );
    assert_eq!(s, 201, "{enrolled}");
    let id = enrolled["device_id"].as_str().unwrap().to_string();
    assert_eq!(
        enrolled["ca_fingerprint"],
        fingerprint.as_str(),
        "the device can compare the CA with its pin"
    );
    let cert = flotilla_hub::devices::ca::pem_to_der(enrolled["certificate_pem"].as_str().unwrap())
        .unwrap();
    let params = rcgen::CertificateParams::from_ca_cert_der(&cert.into()).unwrap();
    assert!(
        format!("{:?}", params.distinguished_name).contains(&id),
        "the certificate names the hub-assigned id"
    );
    assert!(enrolled["root_json"]
        .as_str()
        .unwrap()
        .contains("\"_type\": \"root\""));

    let (s, p) = anonymous.send(
        "POST",
        "/api/v1/enroll",
        serde_json::json!({"token": token, "csr_pem": csr_pem()}),
    );
    assert_eq!(s, 401, "a token works once: {p}");
    let (s, _) = anonymous.send(
        "POST",
        "/api/v1/enroll",
        serde_json::json!({"token": "flt_guess", "csr_pem": csr_pem()}),
    );
    assert_eq!(s, 401);
    let (_, tok2) = c.send(
        "POST",
        "/api/v1/devices/tokens",
        serde_json::json!({"ttl_secs": 3600}),
    );
    let (s, p) = anonymous.send("POST", "/api/v1/enroll", serde_json::json!({"token": tok2["token"], "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}));
    assert_eq!(s, 400, "a bad CSR is refused: {p}");
    let (s, _) = anonymous.send(
        "POST",
        "/api/v1/enroll",
        serde_json::json!({"token": tok2["token"], "csr_pem": csr_pem()}),
    );
    assert_eq!(s, 201, "a refused attempt does not use the token up");
    assert_eq!(
        c.send(
            "POST",
            "/api/v1/devices/tokens",
            serde_json::json!({"ttl_secs": 30 * 86_400})
        )
        .0,
        400
    );

    // A model, an endpoint for site=lyon, and the device's signed desired state.
    for seed in [1, 2] {
        let up = c.upload("m.onnx", &model(seed));
        assert_eq!(
            c.register("fraud", serde_json::json!({"upload": up})).0,
            201
        );
    }
    let (s, _) = c.send(
        "PUT",
        "/api/v1/endpoints/fraud",
        serde_json::json!({"selector": {"site": "lyon"}, "deployments": [{"name": "blue", "model": "fraud", "version": 1},
            {"name": "green", "model": "fraud", "version": 2}], "traffic": {"blue": 90, "green": 10}}),
    );
    assert_eq!(s, 200);
    let doc = c.bytes(&format!("/api/v1/devices/{id}/director"));
    let set = trusted(&c);
    let d = verify_director(
        &doc,
        &set,
        &id,
        None,
        flotilla_hub::now(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(d.endpoints.len(), 1);
    assert_eq!(
        d.endpoints[0]
            .deployments
            .iter()
            .map(|x| x.weight)
            .collect::<Vec<_>>(),
        vec![90, 10]
    );
    let v1 = d.version;
    let again = verify_director(
        &c.bytes(&format!("/api/v1/devices/{id}/director")),
        &set,
        &id,
        Some(v1),
        flotilla_hub::now(),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(
        again.version, v1,
        "unchanged desired state keeps its version"
    );

    // Moving the device to another site empties its desired state, with a new version.
    let (s, dev) = c.send(
        "PATCH",
        &format!("/api/v1/devices/{id}/labels"),
        serde_json::json!({"set": {"site": "paris"}, "reason": "moved"}),
    );
    assert_eq!(s, 200, "{dev}");
    let d2 = verify_director(
        &c.bytes(&format!("/api/v1/devices/{id}/director")),
        &set,
        &id,
        Some(v1),
        flotilla_hub::now(),
        &Default::default(),
    )
    .unwrap();
    assert!(d2.endpoints.is_empty());
    assert!(d2.version > v1);

    let (s, dev) = c.send(
        "POST",
        &format!("/api/v1/devices/{id}/revoke"),
        serde_json::json!({"reason": "stolen"}),
    );
    assert_eq!((s, dev["status"].as_str()), (200, Some("revoked")));
    assert_eq!(
        c.get(&format!("/api/v1/devices/{id}/director")).0,
        409,
        "a revoked device gets no desired state"
    );
    let (_, list) = c.get("/api/v1/devices");
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (_, log) = c.get("/api/v1/audit");
    let actions: Vec<&str> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "device.token.create",
        "device.enroll",
        "device.label",
        "device.revoke",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}
