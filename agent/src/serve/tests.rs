//! In-process tests of [`Serving`]: whole requests through routing, admission,
//! execution and encoding, without sockets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flotilla_protocol::director::MirrorAssignment;
use flotilla_protocol::reconcile::DeploymentKey;
use serde_json::{json, Value};

use super::infer::{Answer, InferCall};
use super::testing::{endpoint, loaded_seed, WIDTH};
use super::{ServeConfig, Serving};

fn request(row: usize) -> Vec<u8> {
    let data: Vec<f32> = (0..WIDTH)
        .map(|i| (row * WIDTH + i) as f32 / 10.0)
        .collect();
    serde_json::to_vec(&json!({
        "inputs": [{"name": "input", "shape": [1, WIDTH], "datatype": "FP32", "data": data}]
    }))
    .unwrap()
}

async fn call(s: &Arc<Serving>, c: InferCall<'_>, body: Vec<u8>) -> Answer {
    s.infer(c, async move { Ok(body) }).await
}

fn model_call(name: &str) -> InferCall<'_> {
    InferCall {
        model: name,
        ..InferCall::default()
    }
}

fn outputs(a: &Answer) -> Value {
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    v["outputs"].clone()
}

fn target(seed: u64) -> String {
    format!("models/m/{seed}/manifest.cbor")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swapping_weights_and_versions_under_load_loses_no_request() {
    let s = Serving::new(ServeConfig {
        max_concurrency: 4,
        max_queue: 10_000,
        ..ServeConfig::default()
    });
    let models: Vec<_> = (1..=3).map(loaded_seed).collect();
    let blue = DeploymentKey::new("m", "blue");
    let green = DeploymentKey::new("m", "green");
    s.set_routes(&[endpoint("m", &[("blue", 90), ("green", 10)], None)]);
    s.activate(&blue, &target(1), Arc::clone(&models[0]));
    s.activate(&green, &target(2), Arc::clone(&models[1]));

    // What each version answers for each row, computed up front.
    let rows = 8;
    let mut expected: HashMap<(String, usize), Value> = HashMap::new();
    {
        let direct = Serving::new(ServeConfig::default());
        for (i, m) in models.iter().enumerate() {
            let seed = i as u64 + 1;
            let key = DeploymentKey::new("d", "local");
            direct.set_routes(&[endpoint("d", &[("local", 100)], None)]);
            direct.activate(&key, &target(seed), Arc::clone(m));
            for row in 0..rows {
                let a = call(&direct, model_call("d"), request(row)).await;
                assert_eq!(a.status, 200);
                expected.insert((target(seed), row), outputs(&a));
            }
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (s, stop, models) = (Arc::clone(&s), Arc::clone(&stop), models.clone());
        tokio::spawn(async move {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let i = (swaps % 3) as usize;
                let w = (swaps % 101) as u32;
                s.set_routes(&[endpoint("m", &[("blue", w), ("green", 100 - w)], None)]);
                s.activate(&blue, &target(i as u64 + 1), Arc::clone(&models[i]));
                s.activate(
                    &green,
                    &target((i as u64 + 1) % 3 + 1),
                    Arc::clone(&models[(i + 1) % 3]),
                );
                swaps += 1;
                tokio::task::yield_now().await;
            }
            swaps
        })
    };
    let mut clients = Vec::new();
    for c in 0..16 {
        let s = Arc::clone(&s);
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            for i in 0..40 {
                let row = (c + i) % rows;
                let a = call(&s, model_call("m"), request(row)).await;
                answers.push((row, a));
            }
            answers
        }));
    }
    let mut total = 0;
    for c in clients {
        for (row, a) in c.await.unwrap() {
            assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
            let (_, served_target) = a.served_by.clone().unwrap();
            // The answer is the one of the version the response names.
            assert_eq!(outputs(&a), expected[&(served_target, row)]);
            total += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.await.unwrap();
    assert_eq!(total, 16 * 40);
    assert!(swaps > 10, "only {swaps} swaps happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_never_changes_the_response_and_records_its_outcome() {
    let plain = Serving::new(ServeConfig::default());
    let mirrored = Serving::new(ServeConfig::default());
    let mirror = MirrorAssignment {
        deployment: "shadow".into(),
        percent: 100,
    };
    plain.set_routes(&[endpoint("m", &[("live", 100)], None)]);
    mirrored.set_routes(&[endpoint("m", &[("live", 100), ("shadow", 0)], Some(mirror))]);
    for s in [&plain, &mirrored] {
        s.activate(&DeploymentKey::new("m", "live"), &target(1), loaded_seed(1));
    }
    mirrored.activate(
        &DeploymentKey::new("m", "shadow"),
        &target(2),
        loaded_seed(2),
    );
    for row in 0..20 {
        let a = call(&plain, model_call("m"), request(row)).await;
        let b = call(&mirrored, model_call("m"), request(row)).await;
        assert_eq!((a.status, b.status), (200, 200));
        assert_eq!(a.body, b.body);
        assert_eq!(b.served_by.unwrap().0, "live");
    }
    // Mirrors run in the background; wait for their outcomes.
    let mut done = 0;
    for _ in 0..200 {
        let snap = mirrored.metrics_snapshot();
        done = snap
            .series
            .iter()
            .filter(|s| s.mirror && s.deployment == "shadow")
            .map(|s| s.mirror_results.values().sum::<u64>())
            .sum();
        if done == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(done, 20);
    let text = mirrored.metrics_text();
    assert!(text.contains(
        "flotilla_agent_requests_total{endpoint=\"m\",deployment=\"live\",mirror=\"false\",code=\"200\"} 20"
    ));
}

/// Two OIP responses agree: the same names, types and shapes, and values equal
/// to within a few float32 ulps. Design: a batched product sums in another
/// order than a one-row product (the GEMM kernels block by the number of
/// rows), so bit equality is not what batching can promise; a wrong row or a
/// mixed-up request differs by far more.
fn same_answer(got: &[u8], want: &[u8], row: usize) {
    let mut got: serde_json::Value = serde_json::from_slice(got).unwrap();
    let mut want: serde_json::Value = serde_json::from_slice(want).unwrap();
    let take = |v: &mut serde_json::Value| -> Vec<f64> {
        v["outputs"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .flat_map(|o| {
                let d = o["data"].take();
                d.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (g, w) = (take(&mut got), take(&mut want));
    assert_eq!(got, want, "row {row}: everything but the values");
    assert_eq!(g.len(), w.len(), "row {row}");
    for (a, b) in g.iter().zip(&w) {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
            "row {row}: {a} vs {b} alone"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_requests_get_the_answers_they_get_alone() {
    let plain = Serving::new(ServeConfig::default());
    let batched = Serving::new(ServeConfig {
        max_concurrency: 1,
        batch_window: Some(Duration::from_millis(20)),
        max_batch: 8,
        ..ServeConfig::default()
    });
    for s in [&plain, &batched] {
        s.set_routes(&[endpoint("m", &[("live", 100)], None)]);
        s.activate(&DeploymentKey::new("m", "live"), &target(1), loaded_seed(1));
    }
    let mut want = Vec::new();
    for row in 0..16 {
        want.push(call(&plain, model_call("m"), request(row)).await.body);
    }
    let mut tasks = Vec::new();
    for row in 0..16 {
        let s = Arc::clone(&batched);
        tasks.push(tokio::spawn(async move {
            call(&s, model_call("m"), request(row)).await
        }));
    }
    for (row, t) in tasks.into_iter().enumerate() {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200);
        same_answer(&a.body, &want[row], row);
    }
    let snap = batched.metrics_snapshot();
    let batch = &snap
        .series
        .iter()
        .find(|s| s.deployment == "live")
        .unwrap()
        .batch_size;
    assert_eq!(batch.sum as u64, 16);
    assert!(batch.count < 16, "no request was batched: {batch:?}");
}

#[tokio::test]
async fn unknown_models_versions_and_pins_get_404_and_bad_inputs_400() {
    let s = Serving::new(ServeConfig::default());
    s.set_routes(&[endpoint("m", &[("blue", 100)], None)]);
    s.activate(&DeploymentKey::new("m", "blue"), &target(3), loaded_seed(1));
    let a = call(&s, model_call("x"), request(0)).await;
    assert_eq!(a.status, 404);
    let c = InferCall {
        version: Some("9"),
        ..model_call("m")
    };
    assert_eq!(call(&s, c, request(0)).await.status, 404);
    let c = InferCall {
        version: Some("3"),
        ..model_call("m")
    };
    let a = call(&s, c, request(0)).await;
    assert_eq!(a.status, 200);
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["model_version"], "3");
    assert_eq!(v["model_name"], "m");
    let c = InferCall {
        pin: Some("green"),
        ..model_call("m")
    };
    assert_eq!(call(&s, c, request(0)).await.status, 404);
    let bad = serde_json::to_vec(&json!({
        "inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32", "data": [0, 0, 0, 0, 0]}]
    }))
    .unwrap();
    let a = call(&s, model_call("m"), bad).await;
    assert_eq!(a.status, 400);
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(
        v["error"],
        "input \"input\": expected shape [-1, 4], got [1, 5]"
    );
}

#[tokio::test(start_paused = true)]
async fn a_body_that_does_not_arrive_gets_408() {
    let s = Serving::new(ServeConfig {
        request_timeout: Duration::from_millis(20),
        ..ServeConfig::default()
    });
    s.set_routes(&[endpoint("m", &[("blue", 100)], None)]);
    s.activate(&DeploymentKey::new("m", "blue"), &target(1), loaded_seed(1));
    let slow_body = async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(request(0))
    };
    let started = tokio::time::Instant::now();
    let a = s.infer(model_call("m"), slow_body).await;
    assert_eq!(a.status, 408);
    // A tight scoring budget still gives the body its floor.
    assert_eq!(started.elapsed(), super::infer::MIN_BODY_TIMEOUT);
}

#[tokio::test]
async fn an_answer_past_the_timeout_gets_504() {
    let s = Serving::new(ServeConfig {
        max_concurrency: 1,
        request_timeout: Duration::from_millis(20),
        ..ServeConfig::default()
    });
    s.set_routes(&[endpoint("m", &[("blue", 100)], None)]);
    s.activate(&DeploymentKey::new("m", "blue"), &target(1), loaded_seed(1));
    // The only execution slot is taken: the request waits in the queue.
    let held = s.admission.try_permit().unwrap();
    let a = call(&s, model_call("m"), request(0)).await;
    assert_eq!(a.status, 504);
    drop(held);
    assert_eq!(call(&s, model_call("m"), request(0)).await.status, 200);
    let snap = s.metrics_snapshot();
    let blue = snap.series.iter().find(|x| x.deployment == "blue").unwrap();
    assert_eq!(blue.errors.get("timeout"), Some(&1));
    assert_eq!(blue.queue_depth, 0);
}

#[tokio::test]
async fn readiness_follows_routes_activation_and_retirement() {
    let s = Serving::new(ServeConfig::default());
    assert!(s.table().ready());
    s.set_routes(&[endpoint("m", &[("blue", 100)], None)]);
    assert!(!s.table().ready());
    let key = DeploymentKey::new("m", "blue");
    s.activate(&key, &target(1), loaded_seed(1));
    assert!(s.table().ready());
    s.retire(&key);
    assert!(!s.table().ready());
    assert_eq!(call(&s, model_call("m"), request(0)).await.status, 503);
    s.set_routes(&[]);
    assert_eq!(call(&s, model_call("m"), request(0)).await.status, 404);
}
