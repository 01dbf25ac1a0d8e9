//! The executor side of the serving benchmark (`bench/serving/run.sh`, issue 6):
//! times `Model::run` alone, with no HTTP, JSON or queueing, on the inputs an
//! inference request body carries, so the script can subtract it from the
//! agent's HTTP latency.
//!
//! - `bare_run time --model FILE.onnx --body BODY.json [--secs S] [--warmup-secs W]`
//!   loads the model as the agent does (`Model::load(&bytes, None)`), builds the
//!   FP32 tensors of BODY's `inputs` (Open Inference Protocol v2 JSON: `name`,
//!   `shape`, flat `data`) once, then runs the model back to back on one thread
//!   for W seconds of warm-up and S measured seconds and prints one JSON line:
//!   `{"runs", "secs", "p50_us", "p90_us", "p99_us", "max_us", "mean_us",
//!   "rayon_num_threads"}`. Each timed span is one `Model::run` call; building
//!   the input map (a tensor handle clone) is outside it.
//! - `bare_run write-mlp OUT.onnx [--layers 64,256,256,10] [--seed 1]` writes
//!   the benchmark's MLP with `flotilla_runtime::generate::mlp`: Gemm
//!   (`transB = 1`) + Relu layers, input `input` float32 `[batch, 64]`, output
//!   `output`. These are the layer sizes of the executor benchmark's `mlp` (issue
//!   5); `gen_mlp` in `tests/examples` only makes square hidden layers as wide as
//!   the input.
//!
//! Intra-op threads: the executor's kernels use rayon's global pool, sized by
//! `RAYON_NUM_THREADS` (all CPUs when unset), exactly as in the agent process;
//! the value seen is echoed in the output. The script sets it to 1 for both
//! this and the agent, to match ONNX Runtime with `intra_op_num_threads = 1`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use flotilla_runtime::{Model, Tensor};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Time `Model::run` on the inputs of an inference request body.
    Time {
        /// The ONNX model.
        #[arg(long, value_name = "FILE")]
        model: PathBuf,
        /// An Open Inference Protocol v2 JSON request body (FP32 inputs).
        #[arg(long, value_name = "FILE")]
        body: PathBuf,
        /// Measured seconds.
        #[arg(long, value_name = "S", default_value_t = 10.0)]
        secs: f64,
        /// Seconds of runs before measuring.
        #[arg(long, value_name = "S", default_value_t = 2.0)]
        warmup_secs: f64,
    },
    /// Write the benchmark MLP as an ONNX file.
    WriteMlp {
        /// Where to write it.
        out: PathBuf,
        /// Layer widths, input first, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "64,256,256,10")]
        layers: Vec<usize>,
        /// Weight seed (the same arguments always give the same bytes).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// The FP32 inputs of an inference request body, by name.
fn inputs_of(body: &Value) -> anyhow::Result<HashMap<String, Tensor>> {
    let inputs = body
        .get("inputs")
        .and_then(Value::as_array)
        .context("the body has no \"inputs\" array")?;
    let mut feed = HashMap::with_capacity(inputs.len());
    for input in inputs {
        let name = input
            .get("name")
            .and_then(Value::as_str)
            .context("an input has no \"name\"")?;
        if input.get("datatype").and_then(Value::as_str) != Some("FP32") {
            bail!("input {name:?}: only FP32 inputs are supported here");
        }
        let shape = input
            .get("shape")
            .and_then(Value::as_array)
            .with_context(|| format!("input {name:?} has no \"shape\""))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .with_context(|| format!("input {name:?}: the shape is not all sizes"))?;
        let data = input
            .get("data")
            .and_then(Value::as_array)
            .with_context(|| format!("input {name:?} has no flat \"data\" array"))?
            .iter()
            // FP32 on the wire: the agent parses each number as f32 too.
            .map(|v| v.as_f64().map(|x| x as f32))
            .collect::<Option<Vec<f32>>>()
            .with_context(|| format!("input {name:?}: \"data\" is not all numbers"))?;
        if shape.iter().product::<usize>() != data.len() {
            bail!(
                "input {name:?}: shape {shape:?} holds {} values, data has {}",
                shape.iter().product::<usize>(),
                data.len()
            );
        }
        let tensor = Tensor::from_f32(&shape, data).with_context(|| format!("input {name:?}"))?;
        feed.insert(name.to_owned(), tensor);
    }
    Ok(feed)
}

/// Nearest-rank percentile of sorted values, in microseconds.
fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted_ns.len() as f64).ceil() as usize;
    sorted_ns[rank.clamp(1, sorted_ns.len()) - 1] as f64 / 1e3
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn time(model: &PathBuf, body: &PathBuf, secs: f64, warmup_secs: f64) -> anyhow::Result<()> {
    if !(secs > 0.0 && secs.is_finite() && warmup_secs >= 0.0 && warmup_secs.is_finite()) {
        bail!("--secs must be positive and --warmup-secs zero or more");
    }
    let bytes = std::fs::read(model).with_context(|| format!("cannot read {}", model.display()))?;
    let model = Model::load(&bytes, None).context("cannot load the model")?;
    let body: Value = serde_json::from_slice(
        &std::fs::read(body).with_context(|| format!("cannot read {}", body.display()))?,
    )
    .context("the body is not JSON")?;
    let feed = inputs_of(&body)?;
    // One run outside any clock: a wrong body fails here, with the run's reason.
    model.run(feed.clone()).context("the model run failed")?;

    let warm_until = Instant::now() + Duration::from_secs_f64(warmup_secs);
    while Instant::now() < warm_until {
        model.run(feed.clone()).context("the model run failed")?;
    }
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut times_ns: Vec<u64> = Vec::with_capacity(1 << 20);
    loop {
        let inputs = feed.clone();
        let start = Instant::now();
        if start >= until {
            break;
        }
        let outs = model.run(inputs);
        let elapsed = start.elapsed();
        outs.context("the model run failed")?;
        times_ns.push(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }
    times_ns.sort_unstable();
    let runs = times_ns.len();
    let mean_us = times_ns.iter().map(|&ns| ns as f64).sum::<f64>() / runs.max(1) as f64 / 1e3;
    let line = json!({
        "runs": runs,
        "secs": secs,
        "p50_us": round2(percentile_us(&times_ns, 50.0)),
        "p90_us": round2(percentile_us(&times_ns, 90.0)),
        "p99_us": round2(percentile_us(&times_ns, 99.0)),
        "max_us": round2(percentile_us(&times_ns, 100.0)),
        "mean_us": round2(mean_us),
        "rayon_num_threads": std::env::var("RAYON_NUM_THREADS").ok(),
    });
    println!("{line}");
    Ok(())
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Time {
            model,
            body,
            secs,
            warmup_secs,
        } => time(&model, &body, secs, warmup_secs),
        Command::WriteMlp { out, layers, seed } => {
            let bytes = flotilla_runtime::generate::mlp(&layers, seed);
            std::fs::write(&out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))
                .map(|()| eprintln!("{}: {} bytes", out.display(), bytes.len()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare_run: {e:#}");
            ExitCode::FAILURE
        }
    }
}
