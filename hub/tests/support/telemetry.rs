//! Telemetry test helpers: enrolling devices over the API, building windows
//! with the protocol's types, and a simulated agent on a real MQTT client
//! that keeps unacknowledged windows and republishes them, like the agent's
//! outbox.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_protocol::limits::Limits;
use flotilla_protocol::telemetry::{topics, EndpointStats, TelemetryWindow, WindowAck};
use flotilla_protocol::time::UtcTime;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};

use super::Client;

/// Mosquitto on this machine, the external broker of the tests.
pub const MOSQUITTO: &str = "127.0.0.1:1883";

/// Whether the machine's Mosquitto answers; tests that need it say so and
/// skip when it does not.
pub fn mosquitto_running() -> bool {
    std::net::TcpStream::connect_timeout(&MOSQUITTO.parse().unwrap(), Duration::from_secs(1))
        .is_ok()
}

/// A fleet name no other test uses.
pub fn unique_fleet(tag: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t-{tag}-{}-{n}", std::process::id())
}

/// A free loopback TCP port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Enrols a device through the API with labels; returns its id.
pub fn enrol(c: &Client, labels: serde_json::Value) -> String {
    let (s, tok) = c.send(
        "POST",
        "/api/v1/devices/tokens",
        serde_json::json!({"labels": labels, "ttl_secs": 3600}),
    );
    assert_eq!(s, 201, "{tok}");
    let key = rcgen::KeyPair::generate().unwrap();
    let p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let (s, enrolled) = c.send(
        "POST",
        "/api/v1/enroll",
        serde_json::json!({"token": tok["token"], "csr_pem": csr}),
    );
    assert_eq!(s, 201, "{enrolled}");
    enrolled["device_id"].as_str().unwrap().to_string()
}

/// A window of `device` numbered `seq` in `epoch`, with `requests` requests
/// (of which `errors` failed) at `latency_us` to `fraud/blue`, ending `end`.
pub fn window(
    device: &str,
    epoch: u64,
    seq: u64,
    requests: u64,
    errors: u64,
    latency_us: u64,
    end: i64,
) -> TelemetryWindow {
    let mut w = TelemetryWindow::new(device, UtcTime(end - 10), UtcTime(end));
    (w.epoch, w.first_seq, w.last_seq) = (epoch, seq, seq);
    let mut e = EndpointStats::new("fraud", "blue");
    e.requests = requests;
    if errors > 0 {
        e.errors.insert("runtime".into(), errors);
    }
    e.latency_us.record_n(latency_us, requests);
    w.endpoints.push(e);
    w.agent.version = "0.1.0".into();
    w.system.memory_total_bytes = 1 << 30;
    w
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    flotilla_hub::now().0
}

/// A simulated agent: an MQTT client of `broker` that publishes windows on
/// its device's topic, holds a retained `online` status with an `offline`
/// last will, and records the acks it receives.
pub struct SimAgent {
    pub device: String,
    pub fleet: String,
    client: AsyncClient,
    acks: Arc<Mutex<BTreeMap<u64, u64>>>,
    /// False from a lost connection until the next ConnAck.
    connected: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl SimAgent {
    /// Connects (and keeps reconnecting) to `broker` (`host:port`).
    pub async fn connect(broker: &str, fleet: &str, device: &str) -> Self {
        Self::connect_as(broker, fleet, device, None).await
    }

    /// Like [`SimAgent::connect`], with a user name and password.
    pub async fn connect_as(
        broker: &str,
        fleet: &str,
        device: &str,
        login: Option<(&str, &str)>,
    ) -> Self {
        let (host, port) = broker.rsplit_once(':').unwrap();
        let mut opts =
            MqttOptions::new(format!("sim-{device}"), host, port.parse::<u16>().unwrap());
        let status = topics::status(fleet, device).unwrap();
        opts.set_clean_session(true)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(2 << 20, 2 << 20)
            .set_last_will(LastWill::new(
                &status,
                topics::STATUS_OFFLINE,
                QoS::AtLeastOnce,
                true,
            ));
        if let Some((u, p)) = login {
            opts.set_credentials(u, p);
        }
        let (client, mut events) = AsyncClient::new(opts, 10_000);
        let acks: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
        let ack_topic = topics::ack(fleet, device).unwrap();
        let (c, a) = (client.clone(), acks.clone());
        let connected = Arc::new(AtomicBool::new(true));
        let up = connected.clone();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        up.store(true, Ordering::Release);
                        let _ = c.try_subscribe(&ack_topic, QoS::AtLeastOnce);
                        let _ =
                            c.try_publish(&status, QoS::AtLeastOnce, true, topics::STATUS_ONLINE);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == ack_topic => {
                        let ack = WindowAck::decode(&p.payload, &Limits::default()).unwrap();
                        let mut m = a.lock().unwrap();
                        let e = m.entry(ack.epoch).or_insert(0);
                        *e = (*e).max(ack.up_to_seq);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        up.store(false, Ordering::Release);
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                }
            }
        });
        Self {
            device: device.to_string(),
            fleet: fleet.to_string(),
            client,
            acks,
            connected,
            task,
        }
    }

    /// Waits until the client has noticed its connection is gone.
    pub async fn wait_disconnected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.connected.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Publishes raw bytes on this device's window topic.
    pub async fn publish_raw(&self, payload: Vec<u8>) {
        let topic = topics::window(&self.fleet, &self.device).unwrap();
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Publishes a window; while a lost connection is down the window is
    /// not handed to the client at all (it stays with the caller, which
    /// publishes it again, as `deliver_all` does).
    ///
    /// Design: this is what the agent's publisher does (it pumps its outbox
    /// only while connected, and probes with the oldest window after a
    /// reconnect). Windows handed to the client during an outage sat in its
    /// request queue and went out first after the reconnect, ahead of older
    /// ones the client had lost with the connection; the hub, which relies
    /// on a device's windows arriving in order, took the older ones for
    /// duplicates once they came (a flaky failure of the hub-restart test).
    pub async fn publish(&self, w: &TelemetryWindow) {
        if !self.connected.load(Ordering::Acquire) {
            return;
        }
        self.publish_raw(w.encode()).await;
    }

    /// The highest sequence number acknowledged for `epoch`.
    pub fn acked(&self, epoch: u64) -> u64 {
        self.acks.lock().unwrap().get(&epoch).copied().unwrap_or(0)
    }

    /// Waits until `epoch` is acknowledged up to `seq`.
    pub async fn wait_acked(&self, epoch: u64, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.acked(epoch) >= seq {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.acked(epoch) >= seq
    }

    /// The outbox's loop: publish every window not acknowledged yet, wait a
    /// little, again, until all are acknowledged or `timeout` passes.
    pub async fn deliver_all(&self, windows: &[TelemetryWindow], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let Some(last) = windows.last() else {
            return true;
        };
        while Instant::now() < deadline {
            for w in windows.iter().filter(|w| w.last_seq > self.acked(w.epoch)) {
                self.publish(w).await;
            }
            if self
                .wait_acked(last.epoch, last.last_seq, Duration::from_secs(2))
                .await
            {
                return true;
            }
        }
        false
    }

    /// Disconnects without a last will.
    pub async fn stop(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.task.abort();
    }
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of an unlabelled Prometheus metric.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// `GET /metrics` as text.
pub fn metrics_text(c: &Client) -> String {
    c.agent
        .get(&format!("{}/metrics", c.base))
        .set("Authorization", &format!("Bearer {}", c.token))
        .call()
        .unwrap()
        .into_string()
        .unwrap()
}

/// Ends the persistent MQTT session `client_id` left on `broker` (connects
/// with a clean session, which discards it), so test runs leave nothing behind.
pub async fn forget_session(broker: &str, client_id: &str) {
    let (host, port) = broker.rsplit_once(':').unwrap();
    let mut opts = MqttOptions::new(client_id, host, port.parse::<u16>().unwrap());
    opts.set_clean_session(true);
    let (client, mut events) = AsyncClient::new(opts, 4);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(300), events.poll()).await;
}

/// A tokio runtime for a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
