//! Events delivered end to end from a real hub: to a webhook that fails
//! twice before it accepts (signed body, retries with backoff, a delivery
//! log), as a server-sent-event stream that resumes after `Last-Event-ID`,
//! and on the fleet's MQTT event topic.
// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use support::telemetry::*;
use support::*;

/// One request as the receiver saw it.
struct Received {
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A tiny HTTP receiver: answers 500 to the first `failures` requests, then
/// 200; hands every request to the returned channel.
fn receiver(failures: usize) -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = HashMap::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            assert!(line.starts_with("POST /hook "), "{line}");
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                let (k, v) = l.split_once(':').unwrap();
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
            let len: usize = headers["content-length"].parse().unwrap();
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let status = if n < failures {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let _ = tx.send(Received { headers, body });
        }
    });
    (url, rx)
}

/// What a receiver does: HMAC-SHA256 of the body with its copy of the secret.
fn signature_valid(secret: &str, body: &[u8], header: &str) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let Some(tag) = header
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    ring::hmac::verify(&key, body, &tag).is_ok()
}

#[test]
fn a_webhook_that_fails_twice_gets_the_signed_event_on_the_third_try() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start_with_env(dir.path(), &[("FLOTILLA_HUB_WEBHOOK_BACKOFF_MS", "100")]);
    let c = hub.client(&hub.admin);
    let (url, received) = receiver(2);
    let (s, hook) = c.send(
        "POST",
        "/api/v1/webhooks",
        serde_json::json!({"url": url, "events": ["device.enrolled"], "secret": "shh-its-a-secret"}),
    );
    assert_eq!(s, 201, "{hook}");
    let id = hook["id"].as_str().unwrap().to_string();
    assert_eq!(
        hook["secret"], "shh-its-a-secret",
        "shown once, at creation"
    );
    let (_, list) = c.get("/api/v1/webhooks");
    assert!(list[0].get("secret").is_none(), "never listed: {list}");

    let device = enrol(&c, serde_json::json!({}));
    let attempts: Vec<Received> = (0..3)
        .map(|_| received.recv_timeout(Duration::from_secs(30)).unwrap())
        .collect();
    for a in &attempts {
        assert_eq!(
            a.body, attempts[0].body,
            "every attempt sends the same body"
        );
        assert!(signature_valid(
            "shh-its-a-secret",
            &a.body,
            &a.headers["x-flotilla-signature"]
        ));
        assert!(
            !signature_valid("wrong-secret", &a.body, &a.headers["x-flotilla-signature"]),
            "a receiver with another secret detects the forgery"
        );
    }
    let event: serde_json::Value = serde_json::from_slice(&attempts[2].body).unwrap();
    assert_eq!(event["type"], "device.enrolled");
    assert_eq!(event["object"], format!("device/{device}"));
    assert_eq!(
        attempts[2].headers["x-flotilla-event-id"],
        event["id"].to_string()
    );
    assert_eq!(attempts[2].headers["x-flotilla-event"], "device.enrolled");
    assert!(
        received.recv_timeout(Duration::from_secs(1)).is_err(),
        "no fourth try"
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let (s, log) = c.get(&format!("/api/v1/webhooks/{id}/deliveries"));
        assert_eq!(s, 200, "{log}");
        if log.as_array().unwrap().len() == 3 || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let rows: Vec<(u64, u64, &str)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["attempt"].as_u64().unwrap(),
                d["status"].as_u64().unwrap(),
                d["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, 500, "retrying"),
            (2, 500, "retrying"),
            (3, 200, "delivered")
        ]
    );
    assert!(log
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["event_id"] == event["id"]));
    let (_, hooks) = c.get("/api/v1/webhooks");
    assert_eq!(
        hooks[0]["cursor"], event["id"],
        "the cursor moved past the event"
    );

    let (s, _) = c.send(
        "DELETE",
        &format!("/api/v1/webhooks/{id}"),
        serde_json::json!({}),
    );
    assert_eq!(s, 204);
    let (s, _) = c.get(&format!("/api/v1/webhooks/{id}/deliveries"));
    assert_eq!(s, 404);
}

/// Reads SSE messages (id, event, data) until `n` arrived.
fn read_sse(reader: &mut impl BufRead, n: usize) -> Vec<(u64, String, serde_json::Value)> {
    let mut out = Vec::new();
    let (mut id, mut kind, mut data) = (None, None, None);
    let mut line = String::new();
    while out.len() < n {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended");
        let l = line.trim_end();
        if let Some(v) = l.strip_prefix("id:") {
            id = Some(v.trim().parse().unwrap());
        } else if let Some(v) = l.strip_prefix("event:") {
            kind = Some(v.trim().to_string());
        } else if let Some(v) = l.strip_prefix("data:") {
            data = Some(serde_json::from_str(v.trim()).unwrap());
        } else if l.is_empty() {
            if let (Some(i), Some(k), Some(d)) = (id.take(), kind.take(), data.take()) {
                out.push((i, k, d));
            }
        }
    }
    out
}

#[test]
fn the_event_stream_resumes_after_last_event_id_and_mqtt_carries_events() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = unique_fleet("events");
    let hub = HubProcess::start_with_env(dir.path(), &[("FLOTILLA_HUB_MQTT_FLEET", &fleet)]);
    let c = hub.client(&hub.admin);
    let rt = runtime();
    // An MQTT subscriber of the fleet's events.
    let (mqtt_tx, mqtt_rx) = mpsc::channel();
    let broker = hub.mqtt_addr.clone();
    let filter = flotilla_protocol::telemetry::topics::all_events(&fleet).unwrap();
    let subscribed = rt.block_on(async move {
        let (host, port) = broker.rsplit_once(':').unwrap();
        let opts = rumqttc::MqttOptions::new("events-watcher", host, port.parse::<u16>().unwrap());
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 16);
        client
            .subscribe(&filter, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        tokio::spawn(async move {
            let _client = client;
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(t) = ready_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let _ = mqtt_tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .is_ok()
    });
    assert!(subscribed);

    let first = enrol(&c, serde_json::json!({}));
    let resp = c
        .agent
        .get(&format!(
            "{}/api/v1/events/stream?type=device.enrolled",
            c.base
        ))
        .set("Authorization", &format!("Bearer {}", c.token))
        .set("Last-Event-ID", "0")
        .call()
        .unwrap();
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut stream = BufReader::new(resp.into_reader());
    let backlog = read_sse(&mut stream, 1);
    assert_eq!(backlog[0].1, "device.enrolled");
    assert_eq!(backlog[0].2["object"], format!("device/{first}"));
    let second = enrol(&c, serde_json::json!({}));
    let live = read_sse(&mut stream, 1);
    assert_eq!(live[0].2["object"], format!("device/{second}"));
    assert!(live[0].0 > backlog[0].0);

    // Resuming after the first one replays the second.
    let resp = c
        .agent
        .get(&format!(
            "{}/api/v1/events/stream?type=device.enrolled",
            c.base
        ))
        .set("Authorization", &format!("Bearer {}", c.token))
        .set("Last-Event-ID", &backlog[0].0.to_string())
        .call()
        .unwrap();
    let resumed = read_sse(&mut BufReader::new(resp.into_reader()), 1);
    assert_eq!(resumed[0].0, live[0].0);

    let (_, page) = c.get("/api/v1/events?type=device.enrolled");
    assert_eq!(page["items"].as_array().unwrap().len(), 2);

    let (topic, payload) = mqtt_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(topic, format!("flotilla/v1/{fleet}/events/device.enrolled"));
    let e = flotilla_protocol::telemetry::Event::decode(&payload, &Default::default()).unwrap();
    assert_eq!(e.id, backlog[0].0);
    assert_eq!(e.object, format!("device/{first}"));
}
