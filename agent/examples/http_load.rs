//! Closed-loop HTTP load client for `bench/serving/run.sh` (issue 6): N threads,
//! each with its own keep-alive connection, POST the same body back to back to
//! one URL for a warm-up and then a measured period, and one JSON line comes
//! out with the exact latency percentiles of every request in the measured
//! period.
//!
//! It speaks plain HTTP/1.1 and knows nothing of the Open Inference Protocol
//! beyond a first request whose answer must be 200 with an `outputs` array, so
//! the same client drives the agent and any other server of the same API
//! (the FastAPI baseline) in the same run. It does not start servers, compare
//! runs or print tables: the script does.
//!
//! A request counts when it starts after the warm-up and ends before the
//! measured period does (requests that straddle either edge are dropped, as
//! wrk does); its latency is from just before the request is written to just
//! after the whole response body is read. Any answer but 200, or a transport
//! error, counts in `errors` and not in the latencies.
//!
//! ```sh
//! cargo run --release -p flotilla-agent --example http_load -- \
//!     --url http://127.0.0.1:8441/v2/models/mlp/infer --body body.json \
//!     --concurrency 32 --secs 10 --warmup-secs 2
//! ```
//!
//! Output: `{"concurrency", "requests", "errors", "secs", "throughput_rps",
//! "p50_us", "p90_us", "p99_us", "max_us", "mean_us"}` (percentiles by nearest
//! rank over the sorted latencies of all threads).

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use serde_json::json;

/// Closed-loop HTTP load: CONCURRENCY connections POST BODY to URL back to back.
#[derive(Debug, Parser)]
struct Args {
    /// The full URL to POST to (e.g. http://127.0.0.1:8441/v2/models/mlp/infer).
    #[arg(long)]
    url: String,
    /// A file whose bytes are sent as the request body, as is
    /// (`content-type: application/json`).
    #[arg(long, value_name = "FILE")]
    body: PathBuf,
    /// Connections (client threads), each sending its next request as soon as
    /// the previous answer is read.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,
    /// Measured seconds.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    secs: f64,
    /// Seconds of load before measuring (connections opened, caches warm).
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    warmup_secs: f64,
    /// Per-request timeout in milliseconds (a timeout counts as an error).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    timeout_ms: u64,
}

/// What one client thread saw in the measured period.
#[derive(Debug, Default)]
struct ThreadResult {
    /// Nanoseconds per successful request.
    latencies_ns: Vec<u64>,
    errors: u64,
    /// The first error, for the log.
    first_error: Option<String>,
}

fn agent(timeout: Duration) -> ureq::Agent {
    // One idle connection is all a closed-loop client ever needs: keep-alive
    // reuses it for every request after the first.
    ureq::AgentBuilder::new()
        .timeout(timeout)
        .max_idle_connections(1)
        .max_idle_connections_per_host(1)
        .no_delay(true)
        .build()
}

/// Sends one request and reads the whole answer (so that the connection goes
/// back to the pool); `Ok` only for a 200.
fn send(agent: &ureq::Agent, url: &str, body: &[u8], sink: &mut Vec<u8>) -> Result<(), String> {
    sink.clear();
    // An empty body means GET (e.g. `/v2/health/live`: the HTTP floor).
    let answer = if body.is_empty() {
        agent.get(url).call()
    } else {
        agent
            .post(url)
            .set("content-type", "application/json")
            .send_bytes(body)
    };
    match answer {
        Ok(resp) => {
            let status = resp.status();
            resp.into_reader()
                .read_to_end(sink)
                .map_err(|e| format!("reading the response: {e}"))?;
            if status == 200 {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        }
        Err(ureq::Error::Status(code, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            Err(format!("status {code}: {}", text.trim()))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// One request before the load, so that a wrong URL or body fails loudly
/// instead of producing a table of errors.
fn check_first_answer(args: &Args, body: &[u8]) -> anyhow::Result<()> {
    let agent = agent(Duration::from_millis(args.timeout_ms));
    let mut answer = Vec::new();
    if let Err(e) = send(&agent, &args.url, body, &mut answer) {
        bail!("first request to {} failed: {e}", args.url);
    }
    if body.is_empty() {
        return Ok(());
    }
    let parsed: serde_json::Value =
        serde_json::from_slice(&answer).context("the first answer is not JSON")?;
    if !parsed
        .get("outputs")
        .is_some_and(serde_json::Value::is_array)
    {
        bail!("the first answer has no \"outputs\" array: {parsed}");
    }
    Ok(())
}

fn client(
    args: &Args,
    body: &[u8],
    barrier: &Barrier,
    started: &OnceLock<Instant>,
) -> ThreadResult {
    let agent = agent(Duration::from_millis(args.timeout_ms));
    let mut sink = Vec::with_capacity(4096);
    let mut result = ThreadResult {
        // Enough for ~100k requests/s per thread over the period without regrowth
        // in most runs; growth past it is amortised and outside any one request.
        latencies_ns: Vec::with_capacity(1 << 16),
        ..ThreadResult::default()
    };
    barrier.wait();
    // The first thread past the barrier sets the clock for all of them, so the
    // warm-up and measured period line up across threads.
    let measure_from =
        *started.get_or_init(Instant::now) + Duration::from_secs_f64(args.warmup_secs);
    let measure_until = measure_from + Duration::from_secs_f64(args.secs);
    loop {
        let start = Instant::now();
        if start >= measure_until {
            break;
        }
        let outcome = send(&agent, &args.url, body, &mut sink);
        let end = Instant::now();
        if start < measure_from || end > measure_until {
            continue;
        }
        match outcome {
            Ok(()) => {
                let ns = u64::try_from((end - start).as_nanos()).unwrap_or(u64::MAX);
                result.latencies_ns.push(ns);
            }
            Err(e) => {
                result.errors += 1;
                result.first_error.get_or_insert(e);
            }
        }
    }
    result
}

/// Nearest-rank percentile of sorted values, in microseconds.
fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    // Nearest rank: the smallest value with at least p% of values at or below it.
    let rank = (p / 100.0 * sorted_ns.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted_ns.len()) - 1;
    sorted_ns[index] as f64 / 1e3
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http_load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.secs > 0.0 && args.secs.is_finite()) {
        bail!("--secs must be a positive number of seconds");
    }
    if !(args.warmup_secs >= 0.0 && args.warmup_secs.is_finite()) {
        bail!("--warmup-secs must be zero or more seconds");
    }
    let body = std::fs::read(&args.body)
        .with_context(|| format!("cannot read the body {}", args.body.display()))?;
    check_first_answer(&args, &body)?;

    let threads = args.concurrency as usize;
    let args = Arc::new(args);
    let body: Arc<[u8]> = body.into();
    // Every thread opens its connection lazily on its first request, after all of
    // them are started.
    let barrier = Arc::new(Barrier::new(threads));
    let started = Arc::new(OnceLock::<Instant>::new());
    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads {
        let (args, body, barrier, started) = (
            Arc::clone(&args),
            Arc::clone(&body),
            Arc::clone(&barrier),
            Arc::clone(&started),
        );
        let handle = std::thread::Builder::new()
            .name(format!("http-load-{i}"))
            .spawn(move || client(&args, &body, &barrier, &started))
            .context("cannot start a client thread")?;
        handles.push(handle);
    }

    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let mut first_error = None;
    for handle in handles {
        let r = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        latencies.extend_from_slice(&r.latencies_ns);
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    if let Some(e) = &first_error {
        eprintln!("http_load: {errors} errors; the first: {e}");
    }
    latencies.sort_unstable();
    let requests = latencies.len();
    let mean_us = if requests == 0 {
        f64::NAN
    } else {
        latencies.iter().map(|&ns| ns as f64).sum::<f64>() / requests as f64 / 1e3
    };
    let line = json!({
        "url": args.url,
        "concurrency": threads,
        "requests": requests,
        "errors": errors,
        "secs": args.secs,
        "throughput_rps": round1(requests as f64 / args.secs),
        "p50_us": round1(percentile_us(&latencies, 50.0)),
        "p90_us": round1(percentile_us(&latencies, 90.0)),
        "p99_us": round1(percentile_us(&latencies, 99.0)),
        "max_us": round1(percentile_us(&latencies, 100.0)),
        "mean_us": round1(mean_us),
    });
    println!("{line}");
    if requests == 0 {
        bail!("no request succeeded in the measured period");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentile_us;

    #[test]
    fn nearest_rank_percentiles_pick_existing_values() {
        let ns: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_us(&ns, 50.0), 50.0);
        assert_eq!(percentile_us(&ns, 99.0), 99.0);
        assert_eq!(percentile_us(&ns, 100.0), 100.0);
        assert_eq!(percentile_us(&[7000], 99.0), 7.0);
    }
}
