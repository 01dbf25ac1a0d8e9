//! `flotilla-agent batch` end to end: a real `flotilla-agent serve` process on
//! loopback scores CSV and JSONL files through the real batch command. Rows
//! come back in input order with the same outputs a direct single-row infer
//! call gives; only malformed rows (and rows the agent rejects on their own)
//! are rejected; an interrupted run, whether cut mid-line or by the agent
//! going away, resumes to exactly the output of an uninterrupted one; and the
//! exit codes say what happened.
// Helpers outside #[test] fns panic on setup failures, as tests do.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use flotilla_runtime::onnx::{
    tensor_proto::DataType,
    tensor_shape_proto::{dimension, Dimension},
    type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use prost::Message;
use serde_json::{json, Value};

/// A small MLP keeps debug-build runs quick: 6 features in, 3 outputs.
const LAYERS: [usize; 3] = [6, 16, 3];
const SEED: u64 = 6;

/// A running `flotilla-agent serve`, killed on drop.
struct Agent {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// Serves `model` as endpoint `name` on a free loopback port.
    fn start(model: &[u8], name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model_path = dir.path().join("model.onnx");
        std::fs::write(&model_path, model).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
            .arg("serve")
            .arg("--model")
            .arg(&model_path)
            .args(["--name", name, "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim_end()
            .strip_prefix("scoring listening on http://")
            .unwrap_or_else(|| {
                let log = std::fs::read_to_string(dir.path().join("stderr.log"));
                panic!("unexpected first line {line:?}; stderr: {log:?}")
            })
            .to_owned();
        Self {
            child,
            base: format!("http://{addr}"),
            _dir: dir,
        }
    }

    fn mlp() -> Self {
        Self::start(&flotilla_runtime::generate::mlp(&LAYERS, SEED), "mlp")
    }

    /// One row scored on its own by a plain infer call.
    fn direct(&self, row: &[f64]) -> Vec<f64> {
        let body = json!({"inputs": [{
            "name": "input", "shape": [1, row.len()], "datatype": "FP32", "data": row,
        }]});
        let resp: Value = ureq::post(&format!("{}/v2/models/mlp/infer", self.base))
            .send_json(body)
            .unwrap()
            .into_json()
            .unwrap();
        floats(&resp["outputs"][0]["data"])
    }
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Runs `flotilla-agent batch ARGS` and waits for it (at most two minutes).
fn batch(args: &[&str]) -> Output {
    Batch::start(args).finish()
}

/// A running `flotilla-agent batch`, its stdout and stderr going to files.
struct Batch {
    child: Child,
    dir: tempfile::TempDir,
}

impl Batch {
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_flotilla-agent"))
            .arg("batch")
            .args(args)
            .env_remove("FLOTILLA_AGENT_URL")
            .env_remove("FLOTILLA_OUTPUT")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        Self { child, dir }
    }

    /// Waits for it; kills it and fails past two minutes.
    fn finish(mut self) -> Output {
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("batch still running after 2 minutes");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Output {
            status,
            stdout: std::fs::read(self.dir.path().join("stdout")).unwrap(),
            stderr: std::fs::read(self.dir.path().join("stderr")).unwrap(),
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Row `i`'s features: deterministic, varied, some integers.
fn features(i: usize) -> Vec<f64> {
    (0..LAYERS[0])
        .map(|j| {
            let k = (i * 7 + j * 13) % 29;
            if j == 0 {
                k as f64 - 14.0
            } else {
                (k as f64 - 14.0) / 8.0
            }
        })
        .collect()
}

fn csv_line(row: &[f64]) -> String {
    row.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A CSV of `rows` rows, with the rows in `bad` replaced by malformed lines.
fn write_csv(path: &Path, rows: usize, bad: &[(usize, &str)]) {
    let header = (0..LAYERS[0])
        .map(|j| format!("f{j}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut s = format!("{header}\n");
    for i in 0..rows {
        match bad.iter().find(|(b, _)| *b == i) {
            Some((_, line)) => s.push_str(line),
            None => s.push_str(&csv_line(&features(i))),
        }
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}: got {got:?}, direct infer gave {want:?}"
        );
    }
}

fn tmp(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn csv_rows_come_back_in_order_and_only_malformed_rows_are_rejected() {
    let agent = Agent::mlp();
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (tmp(&dir, "rows.csv"), tmp(&dir, "out.jsonl"));
    let bad = [(7, "1,2,abc,4,5,6"), (250, "1,2,3"), (499, "1,,3,4,5,6")];
    write_csv(&input, 500, &bad);

    let out = batch(&[
        "--endpoint",
        "mlp",
        "--agent",
        &agent.base,
        "--input",
        s(&input),
        "--output",
        s(&output),
        "--batch-rows",
        "32",
        "--concurrency",
        "4",
    ]);
    assert_eq!(out.status.code(), Some(4), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("497 rows scored, 3 rejected, 0 skipped"),
        "{stdout}"
    );
    assert!(stdout.contains("a cell is not a number"), "{stdout}");
    assert!(
        stdout.contains("the row has 3 values, expected 6"),
        "{stdout}"
    );

    let lines = read_lines(&output);
    assert_eq!(lines.len(), 500);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["row"], i, "line {i}: {line}");
        let is_bad = bad.iter().any(|(b, _)| *b == i);
        assert_eq!(line.get("error").is_some(), is_bad, "line {i}: {line}");
        assert_eq!(line.get("outputs").is_some(), !is_bad, "line {i}: {line}");
    }
    // Errors name the file and the line (the header is line 1).
    let e7 = lines[7]["error"].as_str().unwrap();
    assert!(
        e7.contains("rows.csv line 9: column 3 (\"f2\"): \"abc\" is not a number"),
        "{e7}"
    );
    let e250 = lines[250]["error"].as_str().unwrap();
    assert!(
        e250.ends_with("line 252: the row has 3 values, expected 6"),
        "{e250}"
    );
    assert!(lines[499]["error"]
        .as_str()
        .unwrap()
        .contains("\"\" is not a number"));

    for i in [0, 6, 8, 31, 32, 100, 251, 498] {
        let got = floats(&lines[i]["outputs"]["output"]);
        assert_close(&got, &agent.direct(&features(i)), &format!("row {i}"));
    }
}

#[test]
fn jsonl_arrays_feature_objects_and_named_objects_are_scored() {
    let agent = Agent::mlp();
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (tmp(&dir, "rows.ndjson"), tmp(&dir, "out.jsonl"));
    // The first named line (row 2) writes its keys f0..f5, which sets the
    // column order; later ones write them f5..f0 and are put back in order.
    let named = |i: usize| {
        let f = features(i);
        let mut keys: Vec<usize> = (0..LAYERS[0]).collect();
        if i > 2 {
            keys.reverse();
        }
        let pairs: Vec<String> = keys.iter().map(|&j| format!("\"f{j}\":{}", f[j])).collect();
        format!("{{\"id\":\"n{i}\",{}}}", pairs.join(","))
    };
    let mut s_in = String::new();
    for i in 0..90 {
        let line = match i % 3 {
            0 => json!(features(i)).to_string(),
            1 => json!({"id": i, "features": features(i)}).to_string(),
            _ => named(i),
        };
        s_in.push_str(&line);
        s_in.push('\n');
        if i % 10 == 0 {
            s_in.push('\n');
        }
    }
    std::fs::write(&input, s_in).unwrap();

    let out = batch(&[
        "--endpoint",
        "mlp",
        "--agent",
        &agent.base,
        "--input",
        s(&input),
        "--output",
        s(&output),
        "--output-format",
        "json",
        "--batch-rows",
        "7",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["scored"], 90);
    assert_eq!(summary["rejected"], 0);
    assert_eq!(summary["skipped"], 0);
    assert_eq!(summary["rejected_reasons"], json!([]));
    assert!(summary["rows_per_s"].as_f64().unwrap() > 0.0);

    let lines = read_lines(&output);
    assert_eq!(lines.len(), 90, "blank lines are not rows");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["row"], i);
        match i % 3 {
            0 => assert!(line.get("id").is_none()),
            1 => assert_eq!(line["id"], i),
            _ => assert_eq!(line["id"], format!("n{i}")),
        }
        if i % 11 == 0 || i < 3 {
            let got = floats(&line["outputs"]["output"]);
            assert_close(&got, &agent.direct(&features(i)), &format!("row {i}"));
        }
    }
}

/// An INT64 `[batch, 2]` Identity model: the agent itself rejects 1.5.
fn int64_identity() -> Vec<u8> {
    let dim = |value| Dimension {
        denotation: None,
        value: Some(value),
    };
    let tensor = |name: &str| ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            denotation: None,
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Int64 as i32),
                shape: Some(TensorShapeProto {
                    dim: vec![
                        dim(dimension::Value::DimParam("batch".to_owned())),
                        dim(dimension::Value::DimValue(2)),
                    ],
                }),
            })),
        }),
        ..Default::default()
    };
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        graph: Some(GraphProto {
            name: Some("ids".to_owned()),
            node: vec![NodeProto {
                input: vec!["ids".to_owned()],
                output: vec!["same".to_owned()],
                name: Some("identity".to_owned()),
                op_type: Some("Identity".to_owned()),
                ..Default::default()
            }],
            input: vec![tensor("ids")],
            output: vec![tensor("same")],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn a_request_the_agent_rejects_is_retried_row_by_row() {
    let agent = Agent::start(&int64_identity(), "ids");
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (tmp(&dir, "ids.csv"), tmp(&dir, "out.jsonl"));
    let mut s_in = "a,b\n".to_owned();
    for i in 0..40 {
        if i == 13 || i == 27 {
            s_in.push_str(&format!("{i},{i}.5\n"));
        } else {
            s_in.push_str(&format!("{i},{}\n", -i * 1000));
        }
    }
    std::fs::write(&input, s_in).unwrap();
    let out = batch(&[
        "--endpoint",
        "ids",
        "--agent",
        &agent.base,
        "--input",
        s(&input),
        "--output",
        s(&output),
        "--batch-rows",
        "16",
        "--concurrency",
        "1",
        "--no-progress",
    ]);
    assert_eq!(out.status.code(), Some(4), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("38 rows scored, 2 rejected"), "{stdout}");
    // Both rejections group under one reason whatever their values.
    assert!(
        stdout.contains("       2  rejected by the agent: "),
        "{stdout}"
    );
    let lines = read_lines(&output);
    assert_eq!(lines.len(), 40);
    for (i, line) in lines.iter().enumerate() {
        if i == 13 || i == 27 {
            let e = line["error"].as_str().unwrap();
            assert!(
                e.contains(&format!("ids.csv line {}: rejected by the agent: ", i + 2)),
                "{e}"
            );
            assert!(e.contains("expected an integer"), "{e}");
        } else {
            // Integers go out as integers and come back exactly.
            assert_eq!(
                line["outputs"]["same"],
                json!([i, -(i as i64) * 1000]),
                "{line}"
            );
        }
    }
}

#[test]
fn an_interrupted_run_resumes_to_exactly_the_uninterrupted_output() {
    let agent = Agent::mlp();
    let dir = tempfile::tempdir().unwrap();
    let input = tmp(&dir, "rows.csv");
    write_csv(&input, 1000, &[(5, "x,1,2,3,4,5"), (400, "1")]);
    let args = |output: &Path| {
        vec![
            "--endpoint".to_owned(),
            "mlp".into(),
            "--agent".into(),
            agent.base.clone(),
            "--input".into(),
            s(&input).into(),
            "--output".into(),
            s(output).into(),
            "--batch-rows".into(),
            "50".into(),
        ]
    };
    let run = |extra: &[&str], output: &Path| {
        let mut a = args(output);
        a.extend(extra.iter().map(|x| (*x).to_owned()));
        batch(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let full = tmp(&dir, "full.jsonl");
    assert_eq!(run(&[], &full).status.code(), Some(4));
    let want = std::fs::read(&full).unwrap();

    // 123 complete lines and half of the 124th.
    let cut = tmp(&dir, "cut.jsonl");
    let ends: Vec<usize> = want
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .collect();
    let half = ends[122] + (ends[123] - ends[122]) / 2;
    std::fs::write(&cut, &want[..half]).unwrap();
    let out = run(&[], &cut);
    assert_eq!(out.status.code(), Some(4), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("resuming after 123 rows"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("876 rows scored, 1 rejected, 123 skipped"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        std::fs::read(&cut).unwrap() == want,
        "resumed output differs"
    );

    // Done already: nothing left to score, nothing changes.
    let out = run(&["--output-format", "json"], &cut);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (summary["scored"].as_u64(), summary["skipped"].as_u64()),
        (Some(0), Some(1000))
    );
    assert!(std::fs::read(&cut).unwrap() == want);

    // --restart starts over and gives the same file.
    let out = run(&["--restart"], &cut);
    assert_eq!(out.status.code(), Some(4));
    assert!(!text(&out.stderr).contains("resuming"));
    assert!(std::fs::read(&cut).unwrap() == want);

    // An output longer than the input is not its output.
    let short = tmp(&dir, "short.csv");
    write_csv(&short, 2, &[]);
    let out = batch(&[
        "--endpoint",
        "mlp",
        "--agent",
        &agent.base,
        "--input",
        s(&short),
        "--output",
        s(&cut),
    ]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("it holds 1000 rows but"),
        "{}",
        text(&out.stderr)
    );
    assert!(std::fs::read(&cut).unwrap() == want);

    // A file whose last line is not row count - 1 is refused, untouched.
    let odd = tmp(&dir, "odd.jsonl");
    std::fs::write(&odd, "{\"row\":0}\n{\"row\":7}\n").unwrap();
    let out = run(&[], &odd);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("odd.jsonl: cannot resume"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&odd).unwrap(),
        "{\"row\":0}\n{\"row\":7}\n"
    );
}

#[test]
fn an_agent_going_away_stops_the_run_resumably() {
    let dir = tempfile::tempdir().unwrap();
    let input = tmp(&dir, "rows.csv");
    write_csv(&input, 20_000, &[(3, "oops")]);
    let (full, cut) = (tmp(&dir, "full.jsonl"), tmp(&dir, "cut.jsonl"));

    let agent = Agent::mlp();
    let started = Instant::now();
    let out = batch(&[
        "--endpoint",
        "mlp",
        "--agent",
        &agent.base,
        "--input",
        s(&input),
        "--output",
        s(&full),
        "--no-progress",
    ]);
    assert_eq!(out.status.code(), Some(4), "stderr: {}", text(&out.stderr));
    eprintln!("20,000 rows in {:?}", started.elapsed());
    let want = std::fs::read(&full).unwrap();
    assert_eq!(want.iter().filter(|b| **b == b'\n').count(), 20_000);

    // Small requests one at a time, so the agent can be killed mid-run.
    let child = Batch::start(&[
        "--endpoint",
        "mlp",
        "--agent",
        &agent.base,
        "--input",
        s(&input),
        "--output",
        s(&cut),
        "--batch-rows",
        "4",
        "--concurrency",
        "1",
        "--retries",
        "1",
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&cut).map_or(0, |m| m.len()) < 4096 {
        assert!(Instant::now() < deadline, "no output after 30 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(agent);
    let out = child.finish();
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: agent unreachable at http://"),
        "{stderr}"
    );
    assert!(
        stderr.contains("run the same command again to resume"),
        "{stderr}"
    );
    let partial = std::fs::read(&cut).unwrap();
    assert!(
        partial.len() < want.len() && want.starts_with(&partial),
        "the prefix is intact"
    );

    // A new agent (another port) finishes it.
    let agent = Agent::mlp();
    let out = batch(&[
        "--endpoint",
        "mlp",
        "--agent",
        &agent.base,
        "--input",
        s(&input),
        "--output",
        s(&cut),
        "--batch-rows",
        "256",
    ]);
    // Row 3, the bad one, was done before: nothing is rejected this time.
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("resuming after"));
    assert!(
        std::fs::read(&cut).unwrap() == want,
        "resumed output differs"
    );
}

#[test]
fn unknown_endpoints_missing_agents_and_bad_usage_have_their_exit_codes() {
    let agent = Agent::mlp();
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (tmp(&dir, "rows.csv"), tmp(&dir, "out.jsonl"));
    write_csv(&input, 10, &[]);

    let out = batch(&[
        "--endpoint",
        "nope",
        "--agent",
        &agent.base,
        "--input",
        s(&input),
        "--output",
        s(&output),
    ]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("does not serve endpoint \"nope\""),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!output.exists(), "nothing written for an unknown endpoint");

    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = format!("http://127.0.0.1:{port}");
    let out = batch(&[
        "--endpoint",
        "mlp",
        "--agent",
        &gone,
        "--input",
        s(&input),
        "--output",
        s(&output),
        "--retries",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("agent unreachable"),
        "{}",
        text(&out.stderr)
    );

    // The input's width must be the model's.
    let narrow = tmp(&dir, "narrow.csv");
    std::fs::write(&narrow, "a,b\n1,2\n").unwrap();
    let out = batch(&[
        "--endpoint",
        "mlp",
        "--agent",
        &agent.base,
        "--input",
        s(&narrow),
        "--output",
        s(&output),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("the header has 2 columns"),
        "{}",
        text(&out.stderr)
    );

    // Missing input, unknown extension, bad flags.
    let missing = tmp(&dir, "missing.csv");
    let out = batch(&[
        "--endpoint",
        "mlp",
        "--agent",
        &agent.base,
        "--input",
        s(&missing),
        "--output",
        s(&output),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read"),
        "{}",
        text(&out.stderr)
    );
    let out = batch(&[
        "--endpoint",
        "mlp",
        "--agent",
        &agent.base,
        "--input",
        "rows.txt",
        "--output",
        s(&output),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--format"),
        "{}",
        text(&out.stderr)
    );
    let out = batch(&[
        "--endpoint",
        "mlp",
        "--input",
        s(&input),
        "--output",
        s(&output),
        "--batch-rows",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));

    // An output that cannot be written.
    let out = batch(&[
        "--endpoint",
        "mlp",
        "--agent",
        &agent.base,
        "--input",
        s(&input),
        "--output",
        s(dir.path()),
    ]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
}
