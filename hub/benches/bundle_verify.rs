//! Benchmark: `flotilla bundle verify` of a bundle holding a large ONNX model,
//! against `sha256sum` of the same model file, interleaved in one run.
//!
//! Run: `cargo bench -p flotilla-hub --bench bundle_verify` (release profile).
//! `FLOTILLA_BENCH_SIZES_MIB` (default `256,1024`) picks model sizes;
//! `FLOTILLA_BENCH_RUNS` (default 5) the timed runs per tool. Peak memory comes
//! from `/usr/bin/time -f %M` when it exists. The goal (issue 2): verify within
//! 1.2x sha256sum's time, with memory that does not grow with the model.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use flotilla_hub::packer::{pack, PackRequest};
use flotilla_protocol::manifest::{Accelerator, Lineage};
use flotilla_protocol::tuf::repo::Expiries;

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("FLOTILLA_BENCH_SIZES_MIB")
        .unwrap_or_else(|_| "256,1024".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let runs: usize = std::env::var("FLOTILLA_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("keys");
    let now = flotilla_hub::now();
    flotilla_hub::keystore::init(&keys, 1, 1, now)?;
    let has_time = Path::new("/usr/bin/time").exists();
    println!("| model | sha256sum median | verify median | ratio | sha256sum peak RSS | verify peak RSS |");
    println!("|---|---|---|---|---|---|");
    for (i, mib) in sizes.iter().enumerate() {
        // A one-layer MLP whose weight matrix is `mib` MiB of float32.
        let width = ((*mib as f64) * 1024.0 * 1024.0 / 4.0).sqrt() as usize;
        let model_path = dir.path().join(format!("model-{mib}.onnx"));
        std::fs::write(
            &model_path,
            flotilla_runtime::generate::mlp(&[width, width], 1),
        )?;
        let bundle = dir.path().join(format!("model-{mib}.bundle"));
        let req = PackRequest {
            model: model_path.clone(),
            name: "bench".into(),
            version: i as u64 + 1,
            lineage: Lineage::default(),
            tags: Default::default(),
            accelerator: Accelerator::Cpu,
            min_agent_version: "0.1.0".into(),
            expiries: Expiries::default(),
        };
        pack(&req, &keys, now, &bundle)?;
        let root = keys.join("root.json");
        let sha = vec!["sha256sum".to_string(), model_path.display().to_string()];
        let verify = vec![
            env!("CARGO_BIN_EXE_flotilla").to_string(),
            "bundle".into(),
            "verify".into(),
            bundle.display().to_string(),
            "--root".into(),
            root.display().to_string(),
        ];
        // Warm the page cache for both files, then interleave.
        run(&sha, false)?;
        run(&verify, false)?;
        let (mut ts, mut tv) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            ts.push(run(&sha, false)?.0);
            tv.push(run(&verify, false)?.0);
        }
        let (ms, mv) = (median(&mut ts), median(&mut tv));
        let (rs, rv) = if has_time {
            (run(&sha, true)?.1, run(&verify, true)?.1)
        } else {
            (None, None)
        };
        let kb = |k: Option<u64>| {
            k.map_or("n/a".to_string(), |k| {
                format!("{:.1} MiB", k as f64 / 1024.0)
            })
        };
        println!(
            "| {} MiB ({} bytes bundle) | {:.3} s | {:.3} s | {:.2}x | {} | {} |",
            mib,
            std::fs::metadata(&bundle)?.len(),
            ms,
            mv,
            mv / ms,
            kb(rs),
            kb(rv)
        );
        std::fs::remove_file(&model_path)?;
        std::fs::remove_file(&bundle)?;
    }
    Ok(())
}

/// Runs a command, returning wall seconds and (with `/usr/bin/time`) peak RSS in KiB.
fn run(cmd: &[String], measure_rss: bool) -> anyhow::Result<(f64, Option<u64>)> {
    let mut c = if measure_rss {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-f").arg("%M").args(cmd);
        c
    } else {
        let mut c = Command::new(&cmd[0]);
        c.args(&cmd[1..]);
        c
    };
    let start = Instant::now();
    let out = c.output()?;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    let rss = if measure_rss {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
    } else {
        None
    };
    Ok((secs, rss))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
