//! The scoring server end to end: a real `flotilla-agent serve --model` process
//! on loopback, driven over real HTTP by a plain blocking client, answering as
//! the Open Inference Protocol v2 says: health and metadata, JSON and binary
//! inference equal to a direct executor run, clear 4xx answers for bad
//! requests, 429 under a flood past the queue, 504 past the timeout, and a
//! server that stays healthy when clients vanish mid-request.
// Helpers outside #[test] fns panic on setup failures, as tests do.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use flotilla_runtime::{Model, Tensor};
use serde_json::{json, Value};

const LAYERS: [usize; 4] = [64, 256, 256, 10];
const SEED: u64 = 6;

/// A running `flotilla-agent serve`, killed on drop.
struct Agent {
    child: Child,
    stdout: BufReader<ChildStdout>,
    base: String,
    model_path: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// Starts `serve --model mlp.onnx --listen 127.0.0.1:0 EXTRA...` and waits
    /// for its one line.
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model_path = dir.path().join("mlp.onnx");
        std::fs::write(&model_path, flotilla_runtime::generate::mlp(&LAYERS, SEED)).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
            .arg("serve")
            .arg("--model")
            .arg(&model_path)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let log = || std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
        let addr = line
            .trim_end()
            .strip_prefix("scoring listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}; stderr: {}", log()))
            .to_owned();
        Self {
            child,
            stdout,
            base: format!("http://{addr}"),
            model_path,
            dir,
        }
    }

    fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

/// A status, the response headers we look at, and the body.
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

fn client() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

fn reply(result: Result<ureq::Response, ureq::Error>) -> Reply {
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .filter_map(|n| {
            resp.header(&n)
                .map(|v| (n.to_ascii_lowercase(), v.to_owned()))
        })
        .collect();
    let mut body = Vec::new();
    resp.into_reader().read_to_end(&mut body).unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

fn get(agent: &Agent, path: &str) -> Reply {
    reply(client().get(&agent.url(path)).call())
}

fn post(agent: &Agent, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut req = client().post(&agent.url(path));
    for (k, v) in headers {
        req = req.set(k, v);
    }
    reply(req.send_bytes(body))
}

/// `rows` rows of 64 deterministic input features.
fn features(rows: usize) -> Vec<f32> {
    (0..rows * LAYERS[0])
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect()
}

fn json_request(rows: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "req-1",
        "inputs": [{
            "name": "input",
            "shape": [rows, LAYERS[0]],
            "datatype": "FP32",
            "data": features(rows),
        }]
    }))
    .unwrap()
}

/// A binary-extension request: the JSON header, then raw little-endian floats.
fn binary_request(rows: usize, binary_output: bool) -> (Vec<u8>, usize) {
    let raw: Vec<u8> = features(rows)
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let header = json!({
        "inputs": [{
            "name": "input",
            "shape": [rows, LAYERS[0]],
            "datatype": "FP32",
            "parameters": {"binary_data_size": raw.len()},
        }],
        "outputs": [{"name": "output", "parameters": {"binary_data": binary_output}}],
    });
    let mut body = serde_json::to_vec(&header).unwrap();
    let n = body.len();
    body.extend_from_slice(&raw);
    (body, n)
}

/// The same model run in-process by the executor.
fn direct_run(model_path: &Path, rows: usize) -> Vec<f32> {
    let model = Model::load(&std::fs::read(model_path).unwrap(), None).unwrap();
    let input = Tensor::from_f32(&[rows, LAYERS[0]], features(rows)).unwrap();
    let out = model
        .run(HashMap::from([("input".to_owned(), input)]))
        .unwrap();
    out["output"].to_f32_vec().unwrap()
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "element {i}: got {g}, executor gave {w}"
        );
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn infer_path() -> &'static str {
    "/v2/models/mlp/infer"
}

#[test]
fn health_metadata_sigterm_and_the_one_stdout_line() {
    let mut agent = Agent::start(&[]);
    assert_eq!(get(&agent, "/v2/health/live").status, 200);
    assert_eq!(get(&agent, "/v2/health/ready").status, 200);
    let server = get(&agent, "/v2").json();
    assert_eq!(server["name"], "flotilla-agent");
    assert!(server["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));

    let meta = get(&agent, "/v2/models/mlp");
    assert_eq!(meta.status, 200);
    let meta = meta.json();
    assert_eq!(meta["name"], "mlp");
    assert_eq!(meta["platform"], "onnx");
    assert_eq!(meta["versions"], json!(["local"]));
    assert_eq!(
        meta["inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 64]}])
    );
    assert_eq!(
        meta["outputs"],
        json!([{"name": "output", "datatype": "FP32", "shape": [-1, 10]}])
    );
    assert_eq!(get(&agent, "/v2/models/mlp/ready").status, 200);
    assert_eq!(get(&agent, "/v2/models/mlp/versions/local").status, 200);
    let missing = get(&agent, "/v2/models/nope");
    assert_eq!(missing.status, 404);
    assert!(missing.error().contains("\"nope\""), "{}", missing.error());
    assert_eq!(get(&agent, "/v2/models/nope/ready").status, 404);

    let ok = post(&agent, infer_path(), &[], &json_request(1));
    assert_eq!(ok.status, 200);
    let metrics = String::from_utf8(get(&agent, "/metrics").body).unwrap();
    assert!(metrics.contains(
        "flotilla_agent_requests_total{endpoint=\"mlp\",deployment=\"local\",mirror=\"false\",code=\"200\"} 1"
    ), "{metrics}");
    assert!(metrics.contains("# TYPE flotilla_agent_request_duration_seconds histogram"));

    // SIGTERM stops it cleanly, with exactly one line on stdout over the run.
    let pid = agent.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}; stderr: {}", agent.stderr());
    let mut rest = String::new();
    agent.stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "more on stdout after the first line");
}

#[test]
fn json_inference_matches_a_direct_executor_run() {
    let agent = Agent::start(&[]);
    let rows = 3;
    let want = direct_run(&agent.model_path, rows);

    let r = post(&agent, infer_path(), &[], &json_request(rows));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["x-flotilla-deployment"], "local");
    assert!(r.headers["x-flotilla-model-version"].starts_with("file:"));
    assert!(r.headers["content-type"].starts_with("application/json"));
    let v = r.json();
    assert_eq!(v["model_name"], "mlp");
    assert_eq!(v["model_version"], "local");
    assert_eq!(v["id"], "req-1");
    let out = &v["outputs"][0];
    assert_eq!(out["name"], "output");
    assert_eq!(out["datatype"], "FP32");
    assert_eq!(out["shape"], json!([rows, 10]));
    assert_close(&floats(&out["data"]), &want);

    // Nested data and the versioned path give the same answer.
    let nested: Vec<Vec<f32>> = features(rows)
        .chunks(LAYERS[0])
        .map(<[f32]>::to_vec)
        .collect();
    let body = json!({"inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": nested}]});
    let r = post(
        &agent,
        "/v2/models/mlp/versions/local/infer",
        &[],
        &serde_json::to_vec(&body).unwrap(),
    );
    assert_eq!(r.status, 200);
    assert_close(&floats(&r.json()["outputs"][0]["data"]), &want);
}

#[test]
fn binary_tensor_data_round_trips() {
    let agent = Agent::start(&[]);
    let rows = 4;
    let want = direct_run(&agent.model_path, rows);

    // Binary input, binary output.
    let (body, n) = binary_request(rows, true);
    let r = post(
        &agent,
        infer_path(),
        &[("Inference-Header-Content-Length", &n.to_string())],
        &body,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let json_len: usize = r.headers["inference-header-content-length"]
        .parse()
        .unwrap();
    let head: Value = serde_json::from_slice(&r.body[..json_len]).unwrap();
    let out = &head["outputs"][0];
    assert_eq!(out["shape"], json!([rows, 10]));
    assert_eq!(out["parameters"]["binary_data_size"], rows * 10 * 4);
    assert!(out.get("data").is_none());
    let got: Vec<f32> = r.body[json_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_close(&got, &want);

    // Binary input, JSON output.
    let (body, n) = binary_request(rows, false);
    let r = post(
        &agent,
        infer_path(),
        &[("Inference-Header-Content-Length", &n.to_string())],
        &body,
    );
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("inference-header-content-length"));
    assert_close(&floats(&r.json()["outputs"][0]["data"]), &want);

    // Request-level binary_data_output with JSON input.
    let body = json!({
        "parameters": {"binary_data_output": true},
        "inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": features(rows)}],
    });
    let r = post(
        &agent,
        infer_path(),
        &[],
        &serde_json::to_vec(&body).unwrap(),
    );
    assert_eq!(r.status, 200);
    let json_len: usize = r.headers["inference-header-content-length"]
        .parse()
        .unwrap();
    assert_eq!(r.body.len() - json_len, rows * 10 * 4);

    // A binary size that overruns the body is malformed.
    let (mut body, n) = binary_request(rows, true);
    body.truncate(body.len() - 4);
    let r = post(
        &agent,
        infer_path(),
        &[("Inference-Header-Content-Length", &n.to_string())],
        &body,
    );
    assert_eq!(r.status, 400);
    assert!(r.error().contains("binary_data_size"), "{}", r.error());
}

#[test]
fn wrong_name_datatype_or_shape_gets_400_naming_the_input() {
    let agent = Agent::start(&[]);
    let send = |input: Value| {
        let body = serde_json::to_vec(&json!({ "inputs": input })).unwrap();
        let r = post(&agent, infer_path(), &[], &body);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
        r.error()
    };
    let zeros = |n: usize| vec![0.0f32; n];

    let e = send(
        json!([{"name": "features", "shape": [1, 64], "datatype": "FP32", "data": zeros(64)}]),
    );
    assert!(e.contains("unknown input \"features\""), "{e}");
    assert!(e.contains("\"input\" (FP32 [-1, 64])"), "{e}");

    let e =
        send(json!([{"name": "input", "shape": [1, 64], "datatype": "FP64", "data": zeros(64)}]));
    assert_eq!(e, "input \"input\": expected datatype FP32, got FP64");

    let e =
        send(json!([{"name": "input", "shape": [1, 63], "datatype": "FP32", "data": zeros(63)}]));
    assert_eq!(e, "input \"input\": expected shape [-1, 64], got [1, 63]");

    let e = send(json!([{"name": "input", "shape": [64], "datatype": "FP32", "data": zeros(64)}]));
    assert!(e.contains("expected shape [-1, 64], got [64]"), "{e}");

    let e =
        send(json!([{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": zeros(63)}]));
    assert!(e.contains("input \"input\""), "{e}");
    assert!(e.contains("needs 64 elements, data holds 63"), "{e}");

    let e = send(json!([]));
    assert_eq!(e, "missing input \"input\" (expected FP32 [-1, 64])");

    let e = send(
        json!([{"name": "input", "shape": [1, 64], "datatype": "FLOAT32", "data": zeros(64)}]),
    );
    assert!(e.contains("unknown datatype \"FLOAT32\""), "{e}");
}

#[test]
fn malformed_oversized_and_unknown_requests_get_clear_4xx() {
    let agent = Agent::start(&["--max-body-bytes", "100000"]);

    let r = post(&agent, infer_path(), &[], b"{\"inputs\": [");
    assert_eq!(r.status, 400);
    assert!(
        r.error().starts_with("malformed inference request"),
        "{}",
        r.error()
    );

    let r = post(&agent, infer_path(), &[], b"not json at all");
    assert_eq!(r.status, 400);

    let r = post(&agent, infer_path(), &[], &vec![b' '; 200_000]);
    assert_eq!(r.status, 413);
    assert_eq!(r.error(), "request body is larger than 100000 bytes");

    // Chunked, with no length announced: refused once it passes the limit.
    let mut s = TcpStream::connect(agent.addr()).unwrap();
    write!(
        s,
        "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b' '; 50_000];
    for _ in 0..3 {
        write!(s, "{:x}\r\n", chunk.len()).unwrap();
        let _ = s.write_all(&chunk);
        let _ = s.write_all(b"\r\n");
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let r = post(&agent, "/v2/models/other/infer", &[], &json_request(1));
    assert_eq!(r.status, 404);
    assert_eq!(r.error(), "model \"other\" is not served here");

    let r = post(
        &agent,
        infer_path(),
        &[("x-flotilla-deployment", "green")],
        &json_request(1),
    );
    assert_eq!(r.status, 404);
    assert!(
        r.error().contains("no deployment \"green\""),
        "{}",
        r.error()
    );

    let r = post(
        &agent,
        "/v2/models/mlp/versions/7/infer",
        &[],
        &json_request(1),
    );
    assert_eq!(r.status, 404);

    // The pin header naming the one deployment works.
    let r = post(
        &agent,
        infer_path(),
        &[("x-flotilla-deployment", "local")],
        &json_request(1),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn a_flood_past_the_queue_gets_429_at_once_and_the_rest_are_answered() {
    let agent = Agent::start(&["--max-concurrency", "1", "--max-queue", "1"]);
    let (body, n) = binary_request(2048, true);
    let body = Arc::new(body);
    let clients = 24;
    let barrier = Arc::new(Barrier::new(clients));
    let url = agent.url(infer_path());
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (body, barrier, url) = (Arc::clone(&body), Arc::clone(&barrier), url.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let started = Instant::now();
                let r = reply(
                    client()
                        .post(&url)
                        .set("Inference-Header-Content-Length", &n.to_string())
                        .send_bytes(&body),
                );
                (r, started.elapsed())
            })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for t in threads {
        let (r, took) = t.join().unwrap();
        match r.status {
            200 => ok += 1,
            429 => {
                refused += 1;
                assert_eq!(r.headers.get("retry-after").map(String::as_str), Some("1"));
                assert!(r.error().contains("queue is full"), "{}", r.error());
                assert!(took < Duration::from_secs(10), "429 took {took:?}");
            }
            s => panic!(
                "unexpected status {s}: {}",
                String::from_utf8_lossy(&r.body)
            ),
        }
    }
    assert!(ok >= 1, "nothing was answered");
    assert!(refused >= 1, "no 429 among {clients} concurrent requests");
    let metrics = String::from_utf8(get(&agent, "/metrics").body).unwrap();
    assert!(
        metrics.contains("kind=\"overloaded\"} "),
        "no overloaded count in {metrics}"
    );
    // Still serving.
    assert_eq!(
        post(&agent, infer_path(), &[], &json_request(1)).status,
        200
    );
}

#[test]
fn a_request_past_the_timeout_gets_504() {
    let agent = Agent::start(&["--request-timeout-ms", "1", "--max-concurrency", "1"]);
    let (body, n) = binary_request(4096, true);
    let r = post(
        &agent,
        infer_path(),
        &[("Inference-Header-Content-Length", &n.to_string())],
        &body,
    );
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.error().contains("did not finish within"), "{}", r.error());
}

#[test]
fn clients_that_disconnect_mid_request_leave_the_server_healthy() {
    let agent = Agent::start(&["--max-concurrency", "2", "--max-queue", "64"]);
    let (heavy, n) = binary_request(1024, true);
    for i in 0..12 {
        let mut s = TcpStream::connect(agent.addr()).unwrap();
        if i % 2 == 0 {
            // Half a body, then gone.
            write!(
                s,
                "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
                 Inference-Header-Content-Length: {n}\r\n\r\n",
                heavy.len()
            )
            .unwrap();
            s.write_all(&heavy[..heavy.len() / 2]).unwrap();
        } else {
            // A whole request, gone before the answer.
            write!(
                s,
                "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
                 Inference-Header-Content-Length: {n}\r\n\r\n",
                heavy.len()
            )
            .unwrap();
            s.write_all(&heavy).unwrap();
        }
        s.shutdown(std::net::Shutdown::Both).unwrap();
        drop(s);
    }
    // Every execution and queue place is released.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = String::from_utf8(get(&agent, "/metrics").body).unwrap();
        let busy = metrics.lines().any(|l| {
            (l.starts_with("flotilla_agent_in_flight{")
                || l.starts_with("flotilla_agent_queue_depth{"))
                && !l.ends_with(" 0")
        });
        if !busy {
            break;
        }
        assert!(Instant::now() < deadline, "still busy: {metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut agent = agent;
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent exited: {}",
        agent.stderr()
    );
    assert_eq!(get(&agent, "/v2/health/live").status, 200);
    let rows = 2;
    let r = post(&agent, infer_path(), &[], &json_request(rows));
    assert_eq!(r.status, 200);
    assert_close(
        &floats(&r.json()["outputs"][0]["data"]),
        &direct_run(&agent.model_path, rows),
    );
}

/// Wire compatibility with an existing Open Inference Protocol client, used
/// unchanged: NVIDIA's `tritonclient[http]` (tests/oip/tritonclient_check.py)
/// checks health, metadata, binary and JSON tensors and error reporting.
#[test]
fn an_unchanged_tritonclient_scores_over_the_wire() {
    let agent = Agent::start(&[]);
    let rows = 5;
    let input = agent.dir.path().join("input.f32");
    let raw: Vec<u8> = features(rows)
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    std::fs::write(&input, raw).unwrap();
    // .ci/run installs tritonclient[http] in a venv and sets FLOTILLA_OIP_PYTHON;
    // without it the script fails loudly naming the missing module.
    let python = std::env::var("FLOTILLA_OIP_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oip/tritonclient_check.py");
    let out = Command::new(python)
        .arg(script)
        .arg(agent.addr())
        .arg("mlp")
        .arg(&input)
        .arg(rows.to_string())
        .arg(LAYERS[0].to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tritonclient check failed: {}\nagent stderr: {}",
        String::from_utf8_lossy(&out.stderr),
        agent.stderr()
    );
    let answers: Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = direct_run(&agent.model_path, rows);
    assert_close(&floats(&answers["binary"]), &want);
    assert_close(&floats(&answers["json"]), &want);
}
