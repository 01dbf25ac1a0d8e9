//! The tamper matrix: every trust property of a bundle and of the TUF chain, each
//! proven by a test named after it that breaks exactly that property.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use flotilla_protocol::bundle::{verify_bundle, BundleError, VerifiedBundle};
use flotilla_protocol::director::{
    verify_director, DeploymentAssignment, DirectorDocument, DirectorError, EndpointAssignment,
};
use flotilla_protocol::tuf::repo::{publish, Expiries};
use flotilla_protocol::tuf::{
    Envelope, MetaFile, Role, SigningKey, Snapshot, TargetFile, Targets, Timestamp, TrustedSet,
    TufError, Updater,
};
use flotilla_protocol::Limits;

const MODEL_LEN: usize = 3 << 20;

fn verify(fx: &Fixture, bundle: &[u8]) -> Result<VerifiedBundle, BundleError> {
    verify_bundle(bundle, &fx.root_v1, NOW, &Limits::default(), |_, _| Ok(()))
}

fn tuf_err(r: Result<VerifiedBundle, BundleError>) -> TufError {
    match r {
        Err(BundleError::Tuf(e)) => e,
        other => panic!("expected a TUF error, got {other:?}"),
    }
}

/// Re-signs a metadata document after `edit` changes its body.
fn resign(
    raw: &[u8],
    role: Role,
    keys: &[&SigningKey],
    edit: impl FnOnce(&mut serde_json::Value),
) -> Vec<u8> {
    let mut env = Envelope::parse(role, raw, u64::MAX).unwrap();
    edit(&mut env.signed);
    sign(&env.signed, keys)
}

#[test]
fn an_untampered_bundle_verifies() {
    let fx = Fixture::new(MODEL_LEN);
    let mut seen = 0usize;
    let v = verify_bundle(
        &fx.bundle()[..],
        &fx.root_v1,
        NOW,
        &Limits::default(),
        |_, b| {
            seen += b.len();
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(v.manifest, fx.manifest);
    assert_eq!(v.bytes, MODEL_LEN as u64);
    assert_eq!(seen, MODEL_LEN);
    assert!(v.chunks >= 2, "a 3 MiB model is cut into several chunks");
}

#[test]
fn flipped_byte_in_a_chunk_is_rejected() {
    let fx = Fixture::new(MODEL_LEN);
    let bundle = fx.bundle_with(&fx.repo(), &fx.manifest_bytes, |i, b| {
        if i == 1 {
            b[100] ^= 1;
        }
    });
    match verify(&fx, &bundle) {
        Err(BundleError::ChunkDigest {
            file,
            index: 1,
            expected,
            ..
        }) => {
            assert_eq!(file, "model.onnx");
            assert_eq!(expected, fx.manifest.files[0].chunks[1].digest);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn flipped_byte_anywhere_in_the_archive_is_rejected() {
    let fx = Fixture::new(MODEL_LEN);
    let clean = fx.bundle();
    // Bytes inside metadata, the manifest and chunk payloads, spread over the file.
    for pos in (0..clean.len() - 1024).step_by(clean.len() / 37) {
        let mut bad = clean.clone();
        bad[pos] ^= 0x20;
        assert!(
            verify(&fx, &bad).is_err(),
            "flip at {pos} of {} accepted",
            clean.len()
        );
    }
}

#[test]
fn flipped_byte_in_the_manifest_is_rejected() {
    let fx = Fixture::new(MODEL_LEN);
    let mut m = fx.manifest_bytes.clone();
    let last = m.len() - 1;
    m[last] ^= 1;
    let bundle = fx.bundle_with(&fx.repo(), &m, |_, _| {});
    match tuf_err(verify(&fx, &bundle)) {
        TufError::HashMismatch {
            what,
            expected,
            actual,
        } => {
            assert!(what.contains("models/fraud/1/manifest.cbor"), "{what}");
            assert_ne!(expected, actual);
        }
        other => panic!("{other:?}"),
    }
}

/// Points fresh snapshot and timestamp (genuine keys, next versions) at
/// `targets_raw`, so that a test changes exactly one thing about targets.
fn rechain(fx: &Fixture, repo: &mut MemRepo, targets_raw: Vec<u8>, targets_version: u64) {
    let snap = resign(
        repo.snapshot.as_ref().unwrap(),
        Role::Snapshot,
        &[&fx.online.snapshot],
        |s| {
            s["meta"]["targets.json"] =
                serde_json::to_value(MetaFile::describing(targets_version, &targets_raw)).unwrap();
        },
    );
    let ts = resign(
        repo.timestamp.as_ref().unwrap(),
        Role::Timestamp,
        &[&fx.online.timestamp],
        |t| {
            t["meta"]["snapshot.json"] =
                serde_json::to_value(MetaFile::describing(1, &snap)).unwrap();
        },
    );
    repo.targets = Some(targets_raw);
    repo.snapshot = Some(snap);
    repo.timestamp = Some(ts);
}

#[test]
fn flipped_byte_in_a_signature_is_rejected() {
    let fx = Fixture::new(MODEL_LEN);
    let mut repo = fx.repo();
    let mut env = Envelope::parse(Role::Targets, repo.targets.as_ref().unwrap(), u64::MAX).unwrap();
    let mut sig = hex::decode(&env.signatures[0].sig).unwrap();
    sig[5] ^= 1;
    env.signatures[0].sig = hex::encode(sig);
    rechain(&fx, &mut repo, serde_json::to_vec(&env).unwrap(), 1);
    let bundle = fx.bundle_with(&repo, &fx.manifest_bytes, |_, _| {});
    assert_eq!(
        tuf_err(verify(&fx, &bundle)),
        TufError::Threshold {
            role: Role::Targets,
            valid: 0,
            threshold: 1
        }
    );
}

#[test]
fn targets_signed_by_a_key_root_does_not_name_are_rejected() {
    let fx = Fixture::new(MODEL_LEN);
    let mut repo = fx.repo();
    rechain(&fx, &mut repo, sign(&fx.targets, &[&key()]), 1);
    let bundle = fx.bundle_with(&repo, &fx.manifest_bytes, |_, _| {});
    assert_eq!(
        tuf_err(verify(&fx, &bundle)),
        TufError::Threshold {
            role: Role::Targets,
            valid: 0,
            threshold: 1
        }
    );
}

#[test]
fn targets_signed_by_another_roles_key_are_rejected() {
    let fx = Fixture::new(MODEL_LEN);
    let mut repo = fx.repo();
    rechain(
        &fx,
        &mut repo,
        sign(&fx.targets, &[&fx.online.timestamp, &fx.online.director]),
        1,
    );
    let bundle = fx.bundle_with(&repo, &fx.manifest_bytes, |_, _| {});
    assert_eq!(
        tuf_err(verify(&fx, &bundle)),
        TufError::Threshold {
            role: Role::Targets,
            valid: 0,
            threshold: 1
        }
    );
}

#[test]
fn a_whole_chain_signed_by_strangers_is_rejected_at_the_timestamp() {
    let fx = Fixture::new(MODEL_LEN);
    let p = publish(&fx.targets, 1, NOW, Expiries::default(), &online()).unwrap();
    let mut repo = fx.repo();
    repo.publish(&p);
    let bundle = fx.bundle_with(&repo, &fx.manifest_bytes, |_, _| {});
    assert_eq!(
        tuf_err(verify(&fx, &bundle)),
        TufError::Threshold {
            role: Role::Timestamp,
            valid: 0,
            threshold: 1
        }
    );
}

/// Root v2 (threshold 2 of 3) signed by the given old keys and new keys.
fn rotate(
    fx: &Fixture,
    version: u64,
    new_keys: &[&SigningKey],
    k: u64,
    signers: &[&SigningKey],
) -> Vec<u8> {
    sign(&root_body(version, new_keys, k, &fx.online), signers)
}

#[test]
fn a_new_root_below_the_old_threshold_is_rejected() {
    let fx = Fixture::new(1000);
    let old: Vec<&SigningKey> = fx.root_keys.iter().collect();
    // One of the two required old keys signs (plus the new ones).
    let (n1, n2) = (key(), key());
    let v2 = rotate(&fx, 2, &[&n1, &n2], 2, &[old[0], &n1, &n2]);
    let mut repo = fx.repo();
    repo.roots.insert(2, v2);
    let trusted = TrustedSet::from_trusted_root(&fx.root_v1, &Limits::default()).unwrap();
    let err = Updater::run(trusted, NOW, Limits::default(), |f| repo.fetch(f)).unwrap_err();
    assert_eq!(
        err,
        TufError::Threshold {
            role: Role::Root,
            valid: 1,
            threshold: 2
        }
    );
}

#[test]
fn one_key_signing_twice_counts_once() {
    let fx = Fixture::new(1000);
    let old: Vec<&SigningKey> = fx.root_keys.iter().collect();
    let v2 = rotate(&fx, 2, &old, 2, &[old[0], old[0], old[0]]);
    let mut repo = fx.repo();
    repo.roots.insert(2, v2);
    let trusted = TrustedSet::from_trusted_root(&fx.root_v1, &Limits::default()).unwrap();
    let err = Updater::run(trusted, NOW, Limits::default(), |f| repo.fetch(f)).unwrap_err();
    assert_eq!(
        err,
        TufError::Threshold {
            role: Role::Root,
            valid: 1,
            threshold: 2
        }
    );
}

#[test]
fn a_root_listing_one_key_under_two_ids_is_rejected() {
    let fx = Fixture::new(1000);
    let old: Vec<&SigningKey> = fx.root_keys.iter().collect();
    let mut body = root_body(1, &old, 2, &fx.online);
    // Same public key under a made-up second id, to count one signer twice.
    let fake = flotilla_protocol::tuf::KeyId("00".repeat(32));
    body.keys.insert(fake.clone(), old[0].public().clone());
    body.roles.get_mut("root").unwrap().keyids.push(fake);
    let raw = sign(&body, &[old[0]]);
    assert!(matches!(
        TrustedSet::from_trusted_root(&raw, &Limits::default()),
        Err(TufError::KeyIdMismatch { .. })
    ));
}

#[test]
fn an_expired_timestamp_is_rejected() {
    let fx = Fixture::new(MODEL_LEN);
    let bundle = fx.bundle();
    let later = NOW.plus_secs(Expiries::default().timestamp_secs + 1);
    let err = verify_bundle(
        &bundle[..],
        &fx.root_v1,
        later,
        &Limits::default(),
        |_, _| Ok(()),
    )
    .unwrap_err();
    match err {
        BundleError::Tuf(TufError::Expired {
            role: Role::Timestamp,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_expired_root_is_rejected_after_the_root_update() {
    let fx = Fixture::new(1000);
    let bundle = fx.bundle();
    let later = NOW.plus_secs(YEAR + 1);
    match verify_bundle(
        &bundle[..],
        &fx.root_v1,
        later,
        &Limits::default(),
        |_, _| Ok(()),
    ) {
        Err(BundleError::Tuf(TufError::Expired {
            role: Role::Root, ..
        })) => {}
        other => panic!("{other:?}"),
    }
}

/// A client that trusts publication `v2` of the fixture's repository.
fn trusting_v2(fx: &Fixture) -> (TrustedSet, Targets) {
    let mut t2 = fx.targets.clone();
    t2.version = 2;
    let p2 = publish(&t2, 2, NOW, Expiries::default(), &fx.online).unwrap();
    let mut repo = fx.repo();
    repo.publish(&p2);
    let trusted = TrustedSet::from_trusted_root(&fx.root_v1, &Limits::default()).unwrap();
    (
        Updater::run(trusted, NOW, Limits::default(), |f| repo.fetch(f)).unwrap(),
        t2,
    )
}

#[test]
fn rollback_of_timestamp_is_rejected() {
    let fx = Fixture::new(1000);
    let (trusted, _) = trusting_v2(&fx);
    let repo = fx.repo(); // version 1 everywhere
    let err = Updater::run(trusted, NOW, Limits::default(), |f| repo.fetch(f)).unwrap_err();
    assert_eq!(
        err,
        TufError::Rollback {
            role: Role::Timestamp,
            trusted: 2,
            offered: 1
        }
    );
}

#[test]
fn rollback_of_snapshot_is_rejected() {
    let fx = Fixture::new(1000);
    let (trusted, _) = trusting_v2(&fx);
    // A fresh timestamp (v3) that names the old snapshot v1.
    let old = publish(&fx.targets, 1, NOW, Expiries::default(), &fx.online).unwrap();
    let mut repo = fx.repo();
    repo.publish(&old);
    repo.timestamp = Some(resign(
        &old.timestamp,
        Role::Timestamp,
        &[&fx.online.timestamp],
        |t| t["version"] = 3.into(),
    ));
    let err = Updater::run(trusted, NOW, Limits::default(), |f| repo.fetch(f)).unwrap_err();
    assert_eq!(
        err,
        TufError::Rollback {
            role: Role::Snapshot,
            trusted: 2,
            offered: 1
        }
    );
}

#[test]
fn rollback_of_targets_is_rejected() {
    let fx = Fixture::new(1000);
    let (trusted, _) = trusting_v2(&fx);
    // Fresh timestamp and snapshot (v3) that name the old targets v1.
    let p = publish(&fx.targets, 3, NOW, Expiries::default(), &fx.online).unwrap();
    let mut repo = fx.repo();
    repo.publish(&p);
    let err = Updater::run(trusted, NOW, Limits::default(), |f| repo.fetch(f)).unwrap_err();
    assert_eq!(
        err,
        TufError::Rollback {
            role: Role::Targets,
            trusted: 2,
            offered: 1
        }
    );
}

#[test]
fn rollback_of_root_is_rejected() {
    let fx = Fixture::new(1000);
    let old: Vec<&SigningKey> = fx.root_keys.iter().collect();
    let v2 = rotate(&fx, 2, &old, 2, &old);
    let mut repo = fx.repo();
    repo.roots.insert(2, v2.clone());
    let trusted = TrustedSet::from_trusted_root(&fx.root_v1, &Limits::default()).unwrap();
    let trusted = Updater::run(trusted, NOW, Limits::default(), |f| repo.fetch(f)).unwrap();
    assert_eq!(trusted.root().body.version, 2);
    // Offered as 3.root.json: a validly signed but older root.
    repo.roots.insert(3, fx.root_v1.clone());
    let err = Updater::run(trusted, NOW, Limits::default(), |f| repo.fetch(f)).unwrap_err();
    assert_eq!(
        err,
        TufError::VersionMismatch {
            role: Role::Root,
            expected: 3,
            found: 1
        }
    );
}

#[test]
fn rollback_of_director_is_rejected() {
    let fx = Fixture::new(1000);
    let trusted = Updater::run(
        TrustedSet::from_trusted_root(&fx.root_v1, &Limits::default()).unwrap(),
        NOW,
        Limits::default(),
        |f| fx.repo().fetch(f),
    )
    .unwrap();
    let raw = sign(&director(&fx, "dev-1", 4, 100), &[&fx.online.director]);
    let err =
        verify_director(&raw, &trusted, "dev-1", Some(5), NOW, &Limits::default()).unwrap_err();
    assert_eq!(
        err,
        DirectorError::Tuf(TufError::Rollback {
            role: Role::Director,
            trusted: 5,
            offered: 4
        })
    );
}

fn director(fx: &Fixture, device: &str, version: u64, weight: u32) -> DirectorDocument {
    let t = TargetFile::describing(&fx.manifest_bytes, None);
    DirectorDocument::new(
        device,
        version,
        NOW.plus_secs(86_400),
        vec![EndpointAssignment {
            name: "fraud".into(),
            deployments: vec![DeploymentAssignment {
                name: "blue".into(),
                target: fx.manifest.target_path(),
                length: t.length,
                sha256: t.hashes["sha256"].clone(),
                weight,
            }],
            mirror: None,
        }],
    )
}

#[test]
fn director_documents_bind_device_signer_weights_and_signed_targets() {
    let fx = Fixture::new(1000);
    let trusted = Updater::run(
        TrustedSet::from_trusted_root(&fx.root_v1, &Limits::default()).unwrap(),
        NOW,
        Limits::default(),
        |f| fx.repo().fetch(f),
    )
    .unwrap();
    let l = Limits::default();
    let good = sign(&director(&fx, "dev-1", 1, 100), &[&fx.online.director]);
    assert_eq!(
        verify_director(&good, &trusted, "dev-1", None, NOW, &l)
            .unwrap()
            .version,
        1
    );
    assert!(matches!(
        verify_director(&good, &trusted, "dev-2", None, NOW, &l),
        Err(DirectorError::WrongDevice { .. })
    ));
    let by_targets_key = sign(&director(&fx, "dev-1", 1, 100), &[&fx.online.targets]);
    assert!(matches!(
        verify_director(&by_targets_key, &trusted, "dev-1", None, NOW, &l),
        Err(DirectorError::Tuf(TufError::Threshold {
            role: Role::Director,
            ..
        }))
    ));
    let bad_weights = sign(&director(&fx, "dev-1", 1, 90), &[&fx.online.director]);
    assert!(matches!(
        verify_director(&bad_weights, &trusted, "dev-1", None, NOW, &l),
        Err(DirectorError::BadEndpoint { .. })
    ));
    let mut unsigned = director(&fx, "dev-1", 1, 100);
    unsigned.endpoints[0].deployments[0].sha256 = "ab".repeat(32);
    let unsigned = sign(&unsigned, &[&fx.online.director]);
    assert!(matches!(
        verify_director(&unsigned, &trusted, "dev-1", None, NOW, &l),
        Err(DirectorError::UnsignedTarget { .. })
    ));
    let later = NOW.plus_secs(86_401);
    assert!(matches!(
        verify_director(&good, &trusted, "dev-1", None, later, &l),
        Err(DirectorError::Tuf(TufError::Expired {
            role: Role::Director,
            ..
        }))
    ));
}

#[test]
fn a_root_rotation_chain_is_followed_to_the_newest_root() {
    let fx = Fixture::new(MODEL_LEN);
    let k1: Vec<&SigningKey> = fx.root_keys.iter().collect();
    let (a, b, c) = (key(), key(), key());
    let (d, e, f) = (key(), key(), key());
    // v2: new keys a,b,c, signed by 2 of v1's and 2 of its own.
    let v2 = rotate(&fx, 2, &[&a, &b, &c], 2, &[k1[0], k1[2], &a, &c]);
    // v3: new keys d,e,f, signed by 2 of v2's and 2 of its own.
    let v3 = rotate(&fx, 3, &[&d, &e, &f], 2, &[&b, &c, &d, &e]);
    let mut repo = fx.repo();
    repo.roots.insert(2, v2);
    repo.roots.insert(3, v3);
    let bundle = fx.bundle_with(&repo, &fx.manifest_bytes, |_, _| {});
    let v = verify(&fx, &bundle).unwrap();
    assert_eq!(v.trusted.root().body.version, 3);
}

#[test]
fn a_root_signed_only_by_its_own_new_keys_is_rejected() {
    let fx = Fixture::new(MODEL_LEN);
    let k1: Vec<&SigningKey> = fx.root_keys.iter().collect();
    let (a, b, c) = (key(), key(), key());
    let (d, e, f) = (key(), key(), key());
    let v2 = rotate(&fx, 2, &[&a, &b, &c], 2, &[k1[0], k1[1], &a, &b]);
    let v3 = rotate(&fx, 3, &[&d, &e, &f], 2, &[&d, &e, &f]);
    let mut repo = fx.repo();
    repo.roots.insert(2, v2);
    repo.roots.insert(3, v3);
    let bundle = fx.bundle_with(&repo, &fx.manifest_bytes, |_, _| {});
    assert_eq!(
        tuf_err(verify(&fx, &bundle)),
        TufError::Threshold {
            role: Role::Root,
            valid: 0,
            threshold: 2
        }
    );
}

#[test]
fn rotating_timestamp_keys_discards_the_trusted_timestamp() {
    // Recovery from a fast-forward attack (TUF 5.3.11): once root rotates the
    // timestamp and snapshot keys, lower versions signed by the new keys are
    // accepted, because the trusted timestamp and snapshot were discarded.
    let fx = Fixture::new(1000);
    let (trusted, _) = trusting_v2(&fx);
    let k1: Vec<&SigningKey> = fx.root_keys.iter().collect();
    let (ns, nt) = (key(), key());
    let mut body = root_body(2, &k1, 2, &fx.online);
    body.set_role(Role::Snapshot, &[ns.public()], 1);
    body.set_role(Role::Timestamp, &[nt.public()], 1);
    let mut t3 = fx.targets.clone();
    t3.version = 3;
    let targets_raw = sign(&t3, &[&fx.online.targets]);
    let snap = sign(
        &Snapshot::new(
            1,
            NOW.plus_secs(YEAR),
            MetaFile::describing(3, &targets_raw),
        ),
        &[&ns],
    );
    let ts = sign(
        &Timestamp::new(1, NOW.plus_secs(YEAR), MetaFile::describing(1, &snap)),
        &[&nt],
    );
    let mut repo = fx.repo();
    repo.roots.insert(2, sign(&body, &k1));
    repo.targets = Some(targets_raw);
    repo.snapshot = Some(snap);
    repo.timestamp = Some(ts);
    let after = Updater::run(trusted, NOW, Limits::default(), |f| repo.fetch(f)).unwrap();
    assert_eq!(after.timestamp().unwrap().body.version, 1);
    assert_eq!(after.targets().unwrap().body.version, 3);
}

#[test]
fn mixing_snapshot_and_targets_of_different_publications_is_rejected() {
    let fx = Fixture::new(1000);
    let mut t2 = fx.targets.clone();
    t2.version = 2;
    let p2 = publish(&t2, 2, NOW, Expiries::default(), &fx.online).unwrap();
    let trusted = || TrustedSet::from_trusted_root(&fx.root_v1, &Limits::default()).unwrap();

    let mut repo = fx.repo();
    repo.publish(&p2);
    repo.targets = Some(fx.publication.targets.clone());
    let err = Updater::run(trusted(), NOW, Limits::default(), |f| repo.fetch(f)).unwrap_err();
    assert!(
        matches!(&err, TufError::HashMismatch { what, .. } | TufError::LengthMismatch { what, .. } if what == "targets metadata"),
        "{err}"
    );

    let mut repo = fx.repo();
    repo.snapshot = Some(p2.snapshot.clone());
    let err = Updater::run(trusted(), NOW, Limits::default(), |f| repo.fetch(f)).unwrap_err();
    assert!(
        matches!(&err, TufError::HashMismatch { what, .. } | TufError::LengthMismatch { what, .. } if what == "snapshot metadata"),
        "{err}"
    );
}

#[test]
fn metadata_served_as_another_role_is_rejected() {
    let fx = Fixture::new(1000);
    let mut repo = fx.repo();
    repo.timestamp = repo.snapshot.clone();
    let trusted = TrustedSet::from_trusted_root(&fx.root_v1, &Limits::default()).unwrap();
    let err = Updater::run(trusted, NOW, Limits::default(), |f| repo.fetch(f)).unwrap_err();
    // The snapshot key is not a timestamp key, and its _type says snapshot.
    assert!(
        matches!(
            err,
            TufError::Threshold {
                role: Role::Timestamp,
                ..
            } | TufError::WrongType { .. }
        ),
        "{err}"
    );
}

#[test]
fn endless_data_is_cut_off_at_the_limit() {
    let fx = Fixture::new(1000);
    let mut repo = fx.repo();
    let mut huge = repo.timestamp.clone().unwrap();
    huge.extend(std::iter::repeat_n(b' ', 1 << 20));
    repo.timestamp = Some(huge);
    let trusted = TrustedSet::from_trusted_root(&fx.root_v1, &Limits::default()).unwrap();
    let err = Updater::run(trusted, NOW, Limits::default(), |f| repo.fetch(f)).unwrap_err();
    assert!(
        matches!(
            err,
            TufError::TooLarge {
                role: Role::Timestamp,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_truncated_bundle_is_rejected() {
    let fx = Fixture::new(MODEL_LEN);
    let clean = fx.bundle();
    // Cut inside the last chunk's data.
    let cut = &clean[..clean.len() - 4096];
    assert!(verify(&fx, cut).is_err());
}

#[test]
fn a_bundle_cannot_make_the_verifier_hold_an_endless_root_chain() {
    let fx = Fixture::new(1000);
    let mut repo = fx.repo();
    for v in 2..40 {
        repo.roots.insert(v, fx.root_v1.clone());
    }
    let bundle = fx.bundle_with(&repo, &fx.manifest_bytes, |_, _| {});
    let limits = Limits {
        max_root_chain_bytes: 16 * 1024,
        ..Limits::default()
    };
    match verify_bundle(&bundle[..], &fx.root_v1, NOW, &limits, |_, _| Ok(())) {
        Err(BundleError::Layout(m)) => assert!(m.contains("metadata/root/"), "{m}"),
        other => panic!("{other:?}"),
    }
}
