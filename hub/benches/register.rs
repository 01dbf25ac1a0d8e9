//! Benchmark: registering a large ONNX model end to end (CLI upload over
//! loopback in 8 MiB pieces, then the hub parses, chunks, hashes, stores and
//! signs it) against `sha256sum` of the same file, interleaved in one run; and
//! the hub's peak memory (VmHWM).
//!
//! Run: `cargo bench -p flotilla-hub --bench register`.
//! `FLOTILLA_BENCH_MIB` (default 1024) sets the model size, `FLOTILLA_BENCH_RUNS`
//! (default 3) the runs; each run registers a different model, so no chunk is
//! shared with an earlier run (the cold case).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mib: usize = std::env::var("FLOTILLA_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let runs: u64 = std::env::var("FLOTILLA_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir()?;
    let mut hub = Command::new(env!("CARGO_BIN_EXE_flotilla-hub"))
        .args(["serve", "--api-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("hub"))
        .env("FLOTILLA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(
        hub.stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    )
    .read_line(&mut line)?;
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    let token = std::fs::read_to_string(dir.path().join("hub/admin-token"))?
        .trim()
        .to_string();
    let flotilla = env!("CARGO_BIN_EXE_flotilla");
    let width = ((mib as f64) * 1024.0 * 1024.0 / 4.0).sqrt() as usize;
    let (mut sha, mut reg) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let model = dir.path().join("model.onnx");
        std::fs::write(
            &model,
            flotilla_runtime::generate::mlp(&[width, width], 100 + run),
        )?;
        let t = Instant::now();
        let o = Command::new("sha256sum").arg(&model).output()?;
        anyhow::ensure!(o.status.success(), "sha256sum failed");
        sha.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let o = Command::new(flotilla)
            .args(["--hub", &url, "--token", &token, "model", "register"])
            .arg(&model)
            .args(["--name", "bench", "--reason", "benchmark"])
            .output()?;
        anyhow::ensure!(
            o.status.success(),
            "register failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        reg.push(t.elapsed().as_secs_f64());
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", hub.id()))?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: ? kB")
        .to_string();
    let _ = hub.kill();
    let _ = hub.wait();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (s, r) = (median(&mut sha), median(&mut reg));
    println!("| model | runs | sha256sum median | register median | ratio | hub peak RSS |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {mib} MiB | {runs} | {s:.3} s | {r:.3} s | {:.2}x | {} |",
        r / s,
        hwm.trim_start_matches("VmHWM:").trim()
    );
    Ok(())
}
