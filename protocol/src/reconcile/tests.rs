//! The reconciler's behaviour, proven on the socketless simulation in `sim.rs`.
// Tests unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use super::sim::*;
use super::*;
use crate::digest::AnyDigest;
use crate::wire::DeploymentState;

const MIB: usize = 1 << 20;

fn key() -> DeploymentKey {
    DeploymentKey::new("fraud", "blue")
}

/// A fleet with model `fraud` v1 (6 MiB) and v2 (v1 with 4 KiB changed in the
/// middle), and an agent that runs v1 committed.
fn fleet_with_v1_running() -> (Fleet, Agent, String, String) {
    let mut fleet = Fleet::new();
    let v1_data = model_bytes(6 * MIB, 1);
    let mut v2_data = v1_data.clone();
    v2_data[3 * MIB..3 * MIB + 4096].copy_from_slice(&model_bytes(4096, 99));
    let v1 = fleet.add_model("fraud", 1, &v1_data);
    let v2 = fleet.add_model("fraud", 2, &v2_data);
    let mut agent = Agent::new();
    let desired = fleet.desired(1, &[("fraud", "blue", &v1)]);
    agent.rec.handle_desired(desired, agent.now).unwrap();
    agent.run(&mut fleet);
    assert_eq!(agent.serving.get(&key()), Some(&v1));
    (fleet, agent, v1, v2)
}

fn kinds(agent: &Agent) -> Vec<&'static str> {
    agent
        .log
        .iter()
        .filter_map(|a| match a {
            Action::Stage { .. } => Some("stage"),
            Action::Activate { .. } => Some("activate"),
            Action::RunTrial { .. } => Some("trial"),
            Action::Commit { .. } => Some("commit"),
            Action::RollBack { .. } => Some("rollback"),
            Action::Persist(_) => Some("persist"),
            _ => None,
        })
        .collect()
}

#[test]
fn desired_state_is_fetched_verified_staged_activated_tried_and_committed() {
    let (fleet, agent, v1, _) = fleet_with_v1_running();
    let chunks = fleet.chunks_of(&v1);
    assert!(chunks.len() >= 3, "6 MiB is cut into several chunks");
    assert_eq!(agent.fetched.len(), chunks.len(), "each chunk fetched once");
    assert_eq!(
        kinds(&agent),
        ["persist", "stage", "persist", "activate", "trial", "persist", "commit"]
    );
    let states: Vec<DeploymentState> = agent.reports().into_iter().map(|(_, s)| s).collect();
    assert!(matches!(
        states[0],
        DeploymentState::Fetching { have: 0, .. }
    ));
    assert_eq!(
        states[states.len() - 2..],
        [DeploymentState::Trial, DeploymentState::Active]
    );
    assert_eq!(agent.rec.statuses().len(), 1);
    assert!(
        agent.rec.poll_timeout().is_none(),
        "nothing left to wait for"
    );
}

#[test]
fn a_failed_trial_rolls_back_to_the_previous_version_on_its_own_and_reports_why() {
    let (mut fleet, mut agent, v1, v2) = fleet_with_v1_running();
    agent.trial_policy = |t| {
        if t.contains("/2/") {
            Err("self-test output mismatch".into())
        } else {
            Ok(())
        }
    };
    let desired = fleet.desired(2, &[("fraud", "blue", &v2)]);
    agent.rec.handle_desired(desired, agent.now).unwrap();
    agent.run(&mut fleet);
    assert_eq!(
        agent.serving.get(&key()),
        Some(&v1),
        "old version serves again"
    );
    let rollback = agent.log.iter().find_map(|a| match a {
        Action::RollBack {
            from, to, reason, ..
        } => Some((from.clone(), to.clone(), reason.clone())),
        _ => None,
    });
    assert_eq!(
        rollback,
        Some((
            v2.clone(),
            Some(v1.clone()),
            "self-test output mismatch".into()
        ))
    );
    let last = agent.rec.statuses().pop().unwrap();
    assert_eq!(last.target, v2);
    assert_eq!(last.active, Some(v1.clone()));
    assert_eq!(
        last.state,
        DeploymentState::RolledBack {
            reason: "self-test output mismatch".into()
        }
    );
    // The failed version's own chunks were released and collected.
    let v1_chunks: Vec<_> = fleet.chunks_of(&v1).iter().map(|c| c.digest).collect();
    assert!(fleet
        .chunks_of(&v2)
        .iter()
        .filter(|c| !v1_chunks.contains(&c.digest))
        .all(|c| !agent.store.contains_key(&c.digest)));
}

#[test]
fn a_trial_that_never_answers_is_rolled_back_at_its_deadline() {
    let (mut fleet, mut agent, v1, v2) = fleet_with_v1_running();
    let desired = fleet.desired(2, &[("fraud", "blue", &v2)]);
    agent.rec.handle_desired(desired, agent.now).unwrap();
    agent.answer_trials = false;
    agent.run(&mut fleet);
    assert_eq!(agent.serving.get(&key()), Some(&v2), "on trial");
    let deadline = agent.rec.poll_timeout().unwrap();
    agent.rec.handle_timeout(deadline.plus_secs(-1));
    assert_eq!(agent.rec.poll_action(), None, "not yet");
    agent.now = deadline;
    agent.rec.handle_timeout(deadline);
    agent.answer_trials = true;
    agent.run(&mut fleet);
    assert_eq!(agent.serving.get(&key()), Some(&v1));
    assert!(
        matches!(
            agent.errors[..],
            [ReconcileError::UnexpectedTrialResult { .. }]
        ),
        "a trial answer after the deadline is refused"
    );
    assert!(matches!(
        agent.rec.statuses()[0].state,
        DeploymentState::RolledBack { ref reason } if reason.contains("did not finish")
    ));
}

#[test]
fn a_wrong_chunk_is_rejected_and_fetched_again() {
    let mut fleet = Fleet::new();
    let v1 = fleet.add_model("fraud", 1, &model_bytes(3 * MIB, 5));
    let bad = fleet.chunks_of(&v1)[1].digest;
    fleet.corrupt_once.insert(bad);
    let mut agent = Agent::new();
    let desired = fleet.desired(1, &[("fraud", "blue", &v1)]);
    agent.rec.handle_desired(desired, agent.now).unwrap();
    agent.run(&mut fleet);
    assert!(matches!(
        agent.errors[..],
        [ReconcileError::ChunkRejected { digest, .. }] if digest == bad
    ));
    assert_eq!(agent.fetched.iter().filter(|d| **d == bad).count(), 2);
    assert_eq!(agent.serving.get(&key()), Some(&v1));
    assert_eq!(
        agent.store[&bad], fleet.chunks[&bad],
        "only the good bytes were written"
    );
}

#[test]
fn chunks_are_checked_by_the_blake3_the_manifest_signs() {
    let mut fleet = Fleet::new();
    let data = model_bytes(3 * MIB, 6);
    // The hub signs a manifest whose second chunk lists another BLAKE3: the
    // true bytes (whose SHA-256 is the address) must not be accepted.
    let mut listed = None;
    let v1 = fleet.add_model_edited("fraud", 1, &data, |m| {
        let c = &mut m.files[0].chunks[1];
        c.blake3 = Some(crate::digest::Blake3Digest::of(b"not these bytes"));
        listed = Some(c.digest);
    });
    let odd = listed.unwrap();
    let mut agent = Agent::new();
    let desired = fleet.desired(1, &[("fraud", "blue", &v1)]);
    agent.rec.handle_desired(desired, agent.now).unwrap();
    for _ in 0..200 {
        agent.tick(&mut fleet);
    }
    assert!(!agent.errors.is_empty());
    assert!(agent.errors.iter().all(|e| matches!(
        e,
        ReconcileError::ChunkRejected { digest, actual: AnyDigest::Blake3(_), .. } if *digest == odd
    )));
    assert!(!agent.store.contains_key(&odd), "never written");
    assert_eq!(agent.serving.get(&key()), None, "never activated");
}

#[test]
fn a_manifest_without_blake3_is_checked_by_sha256() {
    let mut fleet = Fleet::new();
    let v1 = fleet.add_model_edited("fraud", 1, &model_bytes(3 * MIB, 7), |m| {
        for c in &mut m.files[0].chunks {
            c.blake3 = None;
        }
    });
    let bad = fleet.chunks_of(&v1)[0].digest;
    fleet.corrupt_once.insert(bad);
    let mut agent = Agent::new();
    let desired = fleet.desired(1, &[("fraud", "blue", &v1)]);
    agent.rec.handle_desired(desired, agent.now).unwrap();
    agent.run(&mut fleet);
    assert!(matches!(
        agent.errors[..],
        [ReconcileError::ChunkRejected { digest, actual: AnyDigest::Sha256(_), .. }] if digest == bad
    ));
    assert_eq!(agent.serving.get(&key()), Some(&v1));
    assert_eq!(agent.store[&bad], fleet.chunks[&bad]);
}

#[test]
fn a_second_version_fetches_only_the_chunks_it_does_not_share() {
    let (mut fleet, mut agent, v1, v2) = fleet_with_v1_running();
    let old: Vec<_> = fleet.chunks_of(&v1).iter().map(|c| c.digest).collect();
    let new: Vec<_> = fleet
        .chunks_of(&v2)
        .iter()
        .map(|c| c.digest)
        .filter(|d| !old.contains(d))
        .collect();
    assert!(
        !new.is_empty() && new.len() <= 2,
        "a 4 KiB edit changes one or two chunks"
    );
    agent.fetched.clear();
    let desired = fleet.desired(2, &[("fraud", "blue", &v2)]);
    agent.rec.handle_desired(desired, agent.now).unwrap();
    agent.run(&mut fleet);
    assert_eq!(agent.fetched, new, "only the new chunks crossed the wire");
    assert_eq!(agent.serving.get(&key()), Some(&v2));
    assert_eq!(
        agent.rec.record().deployments[0]
            .previous
            .as_ref()
            .map(|s| s.target.clone()),
        Some(v1)
    );
}

#[test]
fn a_restart_mid_fetch_resumes_without_fetching_stored_chunks_again() {
    let mut fleet = Fleet::new();
    let v1 = fleet.add_model("fraud", 1, &model_bytes(6 * MIB, 3));
    let all = fleet.chunks_of(&v1).len();
    let mut agent = Agent::new();
    let desired = fleet.desired(1, &[("fraud", "blue", &v1)]);
    agent.rec.handle_desired(desired, agent.now).unwrap();
    while agent.store.len() < 2 {
        assert!(agent.tick(&mut fleet));
    }
    let stored = agent.store.len();
    let before = agent.fetched.len();
    agent.crash_and_restart();
    agent.run(&mut fleet);
    assert_eq!(agent.serving.get(&key()), Some(&v1));
    assert_eq!(
        before, stored,
        "every chunk delivered before the crash was written"
    );
    assert_eq!(
        agent.fetched.len() - before,
        all - stored,
        "after the restart only the chunks not in the store are fetched"
    );
}

/// Runs the v1 -> v2 update, crashing after `crash_at` ticks; checks at the
/// crash that the record points at a complete old or new version, and after
/// the restart that only old or new ever serves. Returns the ticks a clean
/// run takes after the crash point.
fn update_with_crash_at(crash_at: usize, v2_passes: bool) -> usize {
    let (mut fleet, mut agent, v1, v2) = fleet_with_v1_running();
    if !v2_passes {
        agent.trial_policy = |t| {
            if t.contains("/2/") {
                Err("boom".into())
            } else {
                Ok(())
            }
        };
    }
    let desired = fleet.desired(2, &[("fraud", "blue", &v2)]);
    agent.rec.handle_desired(desired, agent.now).unwrap();
    for _ in 0..crash_at {
        if !agent.tick(&mut fleet) {
            break;
        }
    }
    let record = AgentRecord::decode(agent.persisted.as_ref().unwrap()).unwrap();
    let active = record.deployments[0]
        .active
        .as_ref()
        .unwrap()
        .target
        .clone();
    assert!(active == v1 || active == v2, "record points at {active}");
    agent.assert_complete(&fleet, &active);
    if let Some(prev) = &record.deployments[0].previous {
        agent.assert_complete(&fleet, &prev.target);
    }
    agent.crash_and_restart();
    if agent.rec.director_version() < Some(2) {
        // Crashed before the desired state was persisted: on reconnect the
        // hello says director version 1, so the hub pushes version 2 again.
        let desired = fleet.desired(2, &[("fraud", "blue", &v2)]);
        agent.rec.handle_desired(desired, agent.now).unwrap();
    }
    let mut ticks = 0;
    while agent.tick(&mut fleet) {
        ticks += 1;
        if let Some(serving) = agent.serving.get(&key()) {
            assert!(*serving == v1 || *serving == v2, "serving {serving}");
        }
    }
    let expected = if v2_passes { &v2 } else { &v1 };
    assert_eq!(
        agent.serving.get(&key()),
        Some(expected),
        "crash at {crash_at}"
    );
    ticks
}

#[test]
fn a_crash_at_any_point_of_an_update_leaves_old_or_new_serving_never_a_mix_or_nothing() {
    for v2_passes in [true, false] {
        let total = update_with_crash_at(0, v2_passes);
        assert!(total > 10);
        for crash_at in 1..=total {
            update_with_crash_at(crash_at, v2_passes);
        }
    }
}

#[test]
fn a_new_desired_state_mid_fetch_supersedes_the_old_one_cleanly() {
    let mut fleet = Fleet::new();
    let a = fleet.add_model("fraud", 1, &model_bytes(6 * MIB, 11));
    let b = fleet.add_model("fraud", 2, &model_bytes(3 * MIB, 12));
    let mut agent = Agent::new();
    let desired = fleet.desired(1, &[("fraud", "blue", &a)]);
    agent.rec.handle_desired(desired, agent.now).unwrap();
    while agent.store.len() < 2 {
        assert!(agent.tick(&mut fleet));
    }
    let switch = agent.log.len();
    let desired = fleet.desired(2, &[("fraud", "blue", &b)]);
    agent.rec.handle_desired(desired, agent.now).unwrap();
    agent.run(&mut fleet);
    assert_eq!(agent.serving.get(&key()), Some(&b));
    let b_chunks: std::collections::BTreeSet<_> =
        fleet.chunks_of(&b).iter().map(|c| c.digest).collect();
    let store: std::collections::BTreeSet<_> = agent.store.keys().copied().collect();
    assert_eq!(store, b_chunks, "A's partial chunks were collected");
    for act in &agent.log[switch..] {
        match act {
            Action::FetchChunks { digests } => {
                assert!(
                    digests.iter().all(|d| b_chunks.contains(d)),
                    "A requested after the switch"
                )
            }
            Action::WriteChunk { digest, .. } => assert!(b_chunks.contains(digest)),
            Action::Stage { slot, .. } => assert_eq!(slot.target(), b),
            _ => {}
        }
    }
    assert!(!agent
        .log
        .iter()
        .any(|x| matches!(x, Action::Activate { target, .. } if *target == a)));
}

#[test]
fn a_trial_interrupted_by_restarts_too_often_is_rolled_back() {
    let (mut fleet, mut agent, v1, v2) = fleet_with_v1_running();
    agent.answer_trials = false;
    let desired = fleet.desired(2, &[("fraud", "blue", &v2)]);
    agent.rec.handle_desired(desired, agent.now).unwrap();
    agent.run(&mut fleet);
    for _ in 1..agent.config.max_trial_attempts {
        agent.crash_and_restart();
        agent.run(&mut fleet);
        assert_eq!(agent.serving.get(&key()), Some(&v2), "trial runs again");
        assert_eq!(agent.trials.len(), 1);
    }
    agent.crash_and_restart();
    agent.run(&mut fleet);
    assert_eq!(agent.serving.get(&key()), Some(&v1));
    assert!(matches!(
        agent.rec.statuses()[0].state,
        DeploymentState::RolledBack { ref reason } if reason.contains("restarts")
    ));
}

#[test]
fn a_failed_version_is_not_retried_until_the_director_names_another_in_between() {
    let (mut fleet, mut agent, v1, v2) = fleet_with_v1_running();
    agent.trial_policy = |t| {
        if t.contains("/2/") {
            Err("boom".into())
        } else {
            Ok(())
        }
    };
    let rollbacks = |a: &Agent| {
        a.log
            .iter()
            .filter(|x| matches!(x, Action::RollBack { .. }))
            .count()
    };
    for (version, target) in [(2, &v2), (3, &v2)] {
        let desired = fleet.desired(version, &[("fraud", "blue", target)]);
        agent.rec.handle_desired(desired, agent.now).unwrap();
        agent.run(&mut fleet);
    }
    assert_eq!(rollbacks(&agent), 1, "director version 3 did not retry v2");
    for (version, target) in [(4, &v1), (5, &v2)] {
        let desired = fleet.desired(version, &[("fraud", "blue", target)]);
        agent.rec.handle_desired(desired, agent.now).unwrap();
        agent.run(&mut fleet);
    }
    assert_eq!(
        rollbacks(&agent),
        2,
        "named again after v1, v2 is tried again"
    );
    assert_eq!(agent.serving.get(&key()), Some(&v1));
}

#[test]
fn a_deployment_the_director_drops_is_retired_and_its_chunks_released() {
    let (mut fleet, mut agent, _, _) = fleet_with_v1_running();
    let desired = fleet.desired(2, &[]);
    agent.rec.handle_desired(desired, agent.now).unwrap();
    agent.run(&mut fleet);
    assert!(agent.serving.is_empty());
    assert!(agent.store.is_empty(), "every chunk was collected");
    assert!(agent.rec.record().deployments.is_empty());
    assert!(agent.log.iter().any(|a| matches!(a, Action::Retire { .. })));
}

#[test]
fn an_older_desired_state_is_refused() {
    let (fleet, mut agent, v1, _) = fleet_with_v1_running();
    let newer = fleet.desired(5, &[("fraud", "blue", &v1)]);
    agent.rec.handle_desired(newer, agent.now).unwrap();
    let older = fleet.desired(4, &[("fraud", "blue", &v1)]);
    assert_eq!(
        agent.rec.handle_desired(older, agent.now),
        Err(ReconcileError::StaleDesired {
            applied: 5,
            offered: 4
        })
    );
}

#[test]
fn a_manifest_that_targets_metadata_does_not_sign_is_refused() {
    let mut fleet = Fleet::new();
    let v1 = fleet.add_model("fraud", 1, &model_bytes(MIB, 1));
    let doc = fleet.director(1, &[("fraud", "blue", &v1)]);
    let trusted = fleet.trusted();
    let limits = crate::Limits::default();
    let mut manifests = fleet.manifests.clone();
    let mut m = crate::manifest::BundleManifest::decode(&manifests[&v1], &limits).unwrap();
    m.files[0].chunks[0].digest = crate::digest::Sha256Digest([7; 32]);
    manifests.insert(v1.clone(), m.encode());
    assert!(matches!(
        DesiredState::from_verified(&doc, &manifests, &trusted, &limits),
        Err(ReconcileError::Tuf(_))
    ));
    assert_eq!(
        DesiredState::from_verified(&doc, &Default::default(), &trusted, &limits),
        Err(ReconcileError::MissingManifest { target: v1.clone() })
    );
    let refs = manifest_refs(&doc).unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(
        refs[0].sha256,
        crate::digest::Sha256Digest::of(&fleet.manifests[&v1])
    );
}

#[test]
fn chunks_no_slot_references_are_garbage_and_the_rest_are_kept() {
    let (mut fleet, mut agent, v1, v2) = fleet_with_v1_running();
    let desired = fleet.desired(2, &[("fraud", "blue", &v2)]);
    agent.rec.handle_desired(desired, agent.now).unwrap();
    agent.run(&mut fleet);
    let stray = crate::digest::Sha256Digest([9; 32]);
    let stored: Vec<_> = agent.store.keys().copied().chain([stray]).collect();
    assert_eq!(agent.rec.unreferenced(stored), vec![stray]);
    assert!(
        agent.rec.manifest_bytes(&v1).is_some(),
        "previous kept for rollback"
    );
    assert!(fleet
        .chunks_of(&v1)
        .iter()
        .all(|c| agent.rec.is_referenced(&c.digest)));
}

#[test]
fn a_failed_stage_withdraws_the_activation_and_the_old_version_keeps_serving() {
    let (mut fleet, mut agent, v1, v2) = fleet_with_v1_running();
    let desired = fleet.desired(2, &[("fraud", "blue", &v2)]);
    agent.rec.handle_desired(desired, agent.now).unwrap();
    // Drive by hand until the Stage action, and fail it.
    loop {
        match agent.rec.poll_action() {
            Some(Action::Stage { key: k, slot }) => {
                agent
                    .rec
                    .handle_action_failed(&k, slot.target(), "disk full".into(), agent.now)
                    .unwrap();
                break;
            }
            Some(a) => agent.perform(&fleet, a),
            None => assert!(agent.tick(&mut fleet), "no Stage came"),
        }
    }
    agent.run(&mut fleet);
    assert_eq!(agent.serving.get(&key()), Some(&v1));
    assert!(
        !agent
            .log
            .iter()
            .any(|a| matches!(a, Action::Activate { target, .. } if *target == v2)),
        "the withdrawn activation never ran"
    );
    let record = agent.rec.record();
    assert_eq!(record.deployments[0].active.as_ref().unwrap().target, v1);
    assert!(matches!(
        agent.rec.statuses()[0].state,
        DeploymentState::RolledBack { ref reason } if reason == "disk full"
    ));
}
