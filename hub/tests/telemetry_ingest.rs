//! Telemetry ingest end to end, with real processes and real brokers: a hub
//! (its embedded rumqttd, or the machine's Mosquitto as an external broker)
//! and simulated agents on real MQTT clients. Windows are acknowledged only
//! once they are in the hub's store, duplicates are stored once, bad payloads
//! are refused without harm, and a hub restart mid-stream loses nothing.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::telemetry::*;
use support::*;

#[derive(Debug, Clone, Copy)]
enum Broker {
    Embedded,
    Mosquitto,
}

/// Starts a hub for `fleet` on `broker`; the embedded broker on `port` (0: any).
fn start_hub(dir: &Path, broker: Broker, fleet: &str, port: u16) -> HubProcess {
    let listen = format!("127.0.0.1:{port}");
    match broker {
        Broker::Embedded => HubProcess::start_with_env(
            dir,
            &[
                ("FLOTILLA_HUB_MQTT_FLEET", fleet),
                ("FLOTILLA_HUB_MQTT_LISTEN", &listen),
            ],
        ),
        Broker::Mosquitto => HubProcess::start_with_env(
            dir,
            &[
                ("FLOTILLA_HUB_MQTT_MODE", "external"),
                ("FLOTILLA_HUB_MQTT_URL", MOSQUITTO),
                ("FLOTILLA_HUB_MQTT_FLEET", fleet),
            ],
        ),
    }
}

fn skip(broker: Broker) -> bool {
    if matches!(broker, Broker::Mosquitto) && !mosquitto_running() {
        eprintln!("SKIPPED: no Mosquitto on {MOSQUITTO}");
        return true;
    }
    false
}

fn stored_seqs(c: &Client, device: &str) -> Vec<u64> {
    let (s, ws) = c.get(&format!("/api/v1/devices/{device}/windows?limit=10000"));
    assert_eq!(s, 200, "{ws}");
    ws.as_array()
        .unwrap()
        .iter()
        .map(|w| w["last_seq"].as_u64().unwrap())
        .collect()
}

fn acks_follow_the_store_and_duplicates_are_stored_once(broker: Broker) {
    if skip(broker) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fleet = unique_fleet("ingest");
    let hub = start_hub(dir.path(), broker, &fleet, 0);
    let c = hub.client(&hub.admin);
    let (s, info) = c.get("/api/v1/hub");
    assert_eq!(s, 200);
    assert_eq!(
        info["mqtt_addr"],
        hub.mqtt_addr.as_str(),
        "agents learn the broker"
    );
    assert_eq!(info["fleet"], fleet.as_str());
    let device = enrol(&c, serde_json::json!({"site": "lyon"}));
    let rt = runtime();
    rt.block_on(async {
        let agent = SimAgent::connect(&hub.mqtt_addr, &fleet, &device).await;
        let (epoch, t0) = (77, now());
        let ws: Vec<_> = (1..=7)
            .map(|seq| window(&device, epoch, seq, 100, 1, 2_000, t0 + 10 * seq as i64))
            .collect();
        for w in &ws[..5] {
            agent.publish(w).await;
            assert!(
                agent
                    .wait_acked(epoch, w.last_seq, Duration::from_secs(30))
                    .await,
                "window {} acknowledged",
                w.last_seq
            );
            // The ack came after the commit: the window is there.
            assert!(stored_seqs(&c, &device).contains(&w.last_seq));
        }
        // Republished windows (an agent that missed its acks) and a new one.
        for w in &ws[2..6] {
            agent.publish(w).await;
        }
        assert!(agent.wait_acked(epoch, 6, Duration::from_secs(30)).await);
        assert_eq!(stored_seqs(&c, &device), vec![1, 2, 3, 4, 5, 6]);
        let m = metrics_text(&c);
        assert_eq!(metric(&m, "flotilla_telemetry_duplicates_total"), 3);
        assert_eq!(metric(&m, "flotilla_telemetry_windows_stored_total"), 6);

        // Garbage, and a window naming another device, are refused; the hub goes on.
        agent.publish_raw(b"\xff\x00 not cbor".to_vec()).await;
        let mut other = ws[6].clone();
        other.device = "someone-else".into();
        agent.publish(&other).await;
        agent.publish(&ws[6]).await;
        assert!(agent.wait_acked(epoch, 7, Duration::from_secs(30)).await);
        let m = metrics_text(&c);
        assert_eq!(metric(&m, "flotilla_telemetry_decode_errors_total"), 1);
        assert_eq!(metric(&m, "flotilla_telemetry_rejected_total"), 1);

        // A device the hub never enrolled gets nothing stored and no ack.
        let ghost = SimAgent::connect(&hub.mqtt_addr, &fleet, "ghost").await;
        ghost.publish(&window("ghost", 1, 1, 1, 0, 1, t0)).await;
        assert!(!ghost.wait_acked(1, 1, Duration::from_secs(2)).await);
        assert_eq!(
            metric(&metrics_text(&c), "flotilla_telemetry_rejected_total"),
            2
        );

        let (s, m) = c.get(&format!("/api/v1/devices/{device}/metrics"));
        assert_eq!(s, 200, "{m}");
        assert_eq!(m["windows_stored"], 7);
        assert_eq!(m["latest"]["last_seq"], 7);
        let hour = &m["last_hour"][0];
        assert_eq!(
            (hour["endpoint"].as_str(), hour["requests"].as_u64()),
            (Some("fraud"), Some(700))
        );
        assert!(hour["p99_ms"].as_f64().unwrap() >= 2.0);
        assert!(metrics_text(&c)
            .contains("flotilla_requests_total{endpoint=\"fraud\",deployment=\"blue\"} 700"));
        let (s, fleet_view) = c.get("/api/v1/endpoints/fraud/metrics?window_secs=3600");
        assert_eq!(s, 200, "{fleet_view}");
        assert_eq!(
            fleet_view[0]["requests"], 700,
            "the fleet view merges every window"
        );

        // Presence over MQTT: the agent's connection dropping fires its last will.
        drop(agent);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, page) = c.get("/api/v1/events?type=device.offline");
            if page["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["object"] == format!("device/{device}").as_str())
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no device.offline from the last will"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if matches!(broker, Broker::Mosquitto) {
            forget_session(MOSQUITTO, &format!("flotilla-hub-{fleet}")).await;
        }
    });
}

fn a_hub_restart_mid_stream_loses_nothing(broker: Broker) {
    if skip(broker) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fleet = unique_fleet("restart");
    // A fixed port: agents reach the restarted hub's embedded broker where they knew it.
    let port = free_port();
    let hub = start_hub(dir.path(), broker, &fleet, port);
    let c = hub.client(&hub.admin);
    let device = enrol(&c, serde_json::json!({}));
    let broker_addr = hub.mqtt_addr.clone();
    let rt = runtime();
    let (epoch, t0) = (5, now());
    let ws: Vec<_> = (1..=30)
        .map(|seq| window(&device, epoch, seq, 10, 0, 500, t0 + 10 * seq as i64))
        .collect();
    let agent = rt.block_on(async {
        let agent = SimAgent::connect(&broker_addr, &fleet, &device).await;
        assert!(agent.deliver_all(&ws[..10], Duration::from_secs(30)).await);
        agent
    });
    // The hub dies mid-stream; the agent keeps producing.
    hub.stop();
    rt.block_on(async {
        if matches!(broker, Broker::Embedded) {
            // The broker died with the hub: the agent sees its connection go.
            assert!(agent.wait_disconnected(Duration::from_secs(30)).await);
        }
        for w in &ws[10..20] {
            agent.publish(w).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let hub = start_hub(dir.path(), broker, &fleet, port);
    let c = hub.client(&hub.admin);
    rt.block_on(async {
        assert!(
            agent.deliver_all(&ws, Duration::from_secs(60)).await,
            "every window is acknowledged after the restart"
        );
        assert_eq!(
            stored_seqs(&c, &device),
            (1..=30).collect::<Vec<_>>(),
            "each window stored exactly once"
        );
        agent.stop().await;
        if matches!(broker, Broker::Mosquitto) {
            forget_session(MOSQUITTO, &format!("flotilla-hub-{fleet}")).await;
        }
    });
}

#[test]
fn embedded_broker_acks_follow_the_store_and_duplicates_are_stored_once() {
    acks_follow_the_store_and_duplicates_are_stored_once(Broker::Embedded);
}

#[test]
fn mosquitto_acks_follow_the_store_and_duplicates_are_stored_once() {
    acks_follow_the_store_and_duplicates_are_stored_once(Broker::Mosquitto);
}

#[test]
fn embedded_broker_hub_restart_mid_stream_loses_nothing() {
    a_hub_restart_mid_stream_loses_nothing(Broker::Embedded);
}

#[test]
fn mosquitto_hub_restart_mid_stream_loses_nothing() {
    a_hub_restart_mid_stream_loses_nothing(Broker::Mosquitto);
}
