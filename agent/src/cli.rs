//! The `flotilla-agent` command line.
//!
//! Each subcommand is a variant of [`Command`]; [`run`] carries it out and returns
//! the process exit code. This module only wires arguments to library calls.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use flotilla_net::signal::shutdown_signal;

use crate::conformance::{self, Floor, Tolerance};

/// Flotilla's node agent.
#[derive(Debug, Parser)]
#[command(name = "flotilla-agent", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run ONNX backend conformance tests against Flotilla's executor.
    ///
    /// Finds every test folder (model.onnx plus test_data_set_*/input_*.pb and
    /// output_*.pb) under each DIR, runs it, and compares each output with the
    /// expected one: same element type, same shape, and values equal within
    /// |actual - expected| <= atol + rtol * |expected| with rtol = 1e-3 and
    /// atol = 1e-4 for floating-point types (NaN matches NaN), exactly for integer
    /// and bool types. Tests whose model or data use element types the executor
    /// does not hold (string, complex, 8/4-bit floats, ...) are reported as skipped.
    /// Ends with the line `N passed, M failed, K skipped`.
    ///
    /// Exit status: 0 when no test failed (or, with --floor, when every suite meets
    /// its floor), 1 otherwise, 2 on usage or I/O errors.
    Conformance(ConformanceArgs),
    /// Enrol this node with a hub: generate the device key here, trade a
    /// one-time token for a device certificate, pin the hub's CA and TUF root,
    /// and write DATA/agent.toml.
    ///
    /// The hub is trusted only if its CA certificate has the SHA-256
    /// fingerprint given (`flotilla hub info` prints it). The device key
    /// (DATA/device-key.pem, mode 0600) never leaves the node.
    ///
    /// Example:
    ///   flotilla-agent enroll --data-dir /var/lib/flotilla --hub hub.example:7443 \
    ///     --token fe_... --hub-ca-fingerprint 3f2a...
    ///
    /// Exit status: 0 enrolled, 1 the hub is not the pinned one, 2 bad usage or
    /// already enrolled, 3 files could not be written, 4 the hub refused the
    /// token, 7 the hub could not be reached.
    Enroll(EnrollArgs),
    /// Run the agent: hold a QUIC connection to the hub, fetch, verify, stage,
    /// activate and trial what the hub's signed director document names, and
    /// roll back on its own when a trial fails.
    ///
    /// Reads DATA/agent.toml (written by `enroll`; `--config FILE` overrides it;
    /// FLOTILLA_AGENT_HUB and FLOTILLA_AGENT_DATA_DIR override values in it).
    /// Logs go to stderr (RUST_LOG=debug for more); status goes to
    /// DATA/status.json. Stops cleanly on Ctrl-C or SIGTERM.
    Run(RunArgs),
    /// Show what the agent on DATA runs: connection, trusted metadata
    /// versions, each deployment's state and what serves.
    ///
    /// Exit status: 0 shown, 3 no status in DATA.
    Status(StatusArgs),
    /// Serve a model on this machine without any hub: the scoring API that
    /// applications on a node call (Open Inference Protocol v2 REST, as Triton,
    /// KServe and MLServer speak it), for local debugging.
    ///
    /// `--model FILE.onnx` serves an ONNX file (its signature read from the
    /// graph); `--bundle FILE.bundle --root root.json` verifies a signed bundle
    /// against the pinned root first, exactly as the agent does, stages it and
    /// runs its trial. The model is served as endpoint NAME (default: the file
    /// stem, or the bundle's model name) with one deployment, `local`.
    ///
    /// Prints exactly one line on stdout once bound:
    /// `scoring listening on http://ADDR`. Logs go to stderr. Runs until Ctrl-C
    /// or SIGTERM.
    ///
    /// Example:
    ///   flotilla-agent serve --model mlp.onnx --listen 127.0.0.1:0
    ///   curl -s localhost:PORT/v2/models/mlp
    ///
    /// Exit status: 0 stopped by a signal, 1 the model or bundle could not be
    /// loaded or verified, 2 bad usage or the address could not be bound.
    Serve(ServeArgs),
    /// Score a file through a running agent's scoring API: one request per
    /// --batch-rows rows, --concurrency requests at a time, one JSON line per
    /// input row written to --output in input order.
    ///
    /// Input: CSV with a header row (every column a numeric feature, in
    /// order), or JSONL with one row per line: an array of numbers,
    /// `{"id": .., "features": [..]}`, or an object of named numbers (columns
    /// in the first such line's key order); `id` is copied to the output.
    /// Blank lines are skipped and not numbered. Rows become rows of the
    /// model's input tensor [rows, features], sent in its datatype.
    ///
    /// Output lines: `{"row": N, "outputs": {"NAME": [values]}}` or
    /// `{"row": N, "error": "reason"}`, rows numbered from 0 (the CSV header
    /// is not a row). A request the agent rejects (4xx) is retried row by
    /// row; 5xx and connection errors are retried with backoff, then the run
    /// stops. Running again resumes after the rows already in --output
    /// (a partial last line is cut off); --restart starts over.
    ///
    /// Example:
    ///   flotilla-agent batch --endpoint mlp --input rows.csv --output scores.jsonl
    ///
    /// Exit status: 0 every row scored, 4 done but some rows rejected, 1 the
    /// agent unreachable or failing, 2 bad usage, unreadable input or unknown
    /// endpoint, 3 the output file cannot be written or resumed.
    Batch(BatchArgs),
}

/// Arguments of `batch`.
#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    /// Endpoint to score with (the model name in the v2 paths).
    #[arg(long, value_name = "NAME")]
    pub endpoint: String,
    /// The rows to score: CSV with a header row, or JSONL.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Input format (default: from the extension: .csv, .jsonl or .ndjson).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<crate::batch::InputFormat>,
    /// Output file, one JSON line per input row; resumed when it exists.
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// The agent's scoring API.
    #[arg(
        long,
        value_name = "URL",
        env = "FLOTILLA_AGENT_URL",
        default_value = "http://127.0.0.1:8441"
    )]
    pub agent: String,
    /// Rows per request.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = positive)]
    pub batch_rows: usize,
    /// Requests in flight at once (at most 256).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = positive)]
    pub concurrency: usize,
    /// The model input to fill (default: the model's only input).
    #[arg(long, value_name = "NAME")]
    pub input_name: Option<String>,
    /// Truncate --output and start over instead of resuming it.
    #[arg(long)]
    pub restart: bool,
    /// Retries of a request after a 5xx, 408, 429 or connection error, with
    /// doubling backoff from 250 ms.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub retries: u32,
    /// Seconds one request may take.
    #[arg(long, value_name = "SECS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_s: u64,
    /// Do not show the progress bar (it is hidden anyway when stderr is not a
    /// terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Format of the summary on stdout.
    #[arg(
        long,
        value_enum,
        default_value_t = crate::batch::command::SummaryFormat::Text,
        env = "FLOTILLA_OUTPUT"
    )]
    pub output_format: crate::batch::command::SummaryFormat,
}

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The ONNX model to serve.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "bundle",
        conflicts_with = "bundle"
    )]
    pub model: Option<PathBuf>,
    /// A signed bundle file (`flotilla bundle pack`) to verify and serve.
    #[arg(long, value_name = "FILE", requires = "root")]
    pub bundle: Option<PathBuf>,
    /// The pinned TUF root (root.json) the bundle must verify against.
    #[arg(long, value_name = "FILE", requires = "bundle")]
    pub root: Option<PathBuf>,
    /// Endpoint name, the model name in the v2 paths (default: the file stem,
    /// or the bundle's model name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Address to listen on, IP:PORT; port 0 picks a free one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8441")]
    pub listen: SocketAddr,
    /// Model executions running at once (default: one per CPU).
    #[arg(long, value_name = "N", value_parser = positive)]
    pub max_concurrency: Option<usize>,
    /// Requests waiting for an execution before new ones get 429.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_queue: usize,
    /// Milliseconds a request may take before it gets 504.
    #[arg(long, value_name = "MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
    /// Batch requests arriving within this many microseconds of each other
    /// (off unless given).
    #[arg(long, value_name = "US")]
    pub batch_window_us: Option<u64>,
    /// Most rows in one batch.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = positive)]
    pub max_batch: usize,
    /// Largest request body in bytes; larger ones get 413.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20, value_parser = positive)]
    pub max_body_bytes: usize,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive integer")),
    }
}

impl ServeArgs {
    /// The server configuration these flags ask for.
    pub fn serve_config(&self) -> crate::serve::ServeConfig {
        let defaults = crate::serve::ServeConfig::default();
        crate::serve::ServeConfig {
            max_concurrency: self.max_concurrency.unwrap_or(defaults.max_concurrency),
            max_queue: self.max_queue,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            batch_window: self.batch_window_us.map(Duration::from_micros),
            max_batch: self.max_batch,
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// Arguments of `enroll`.
#[derive(Debug, clap::Args)]
pub struct EnrollArgs {
    /// Data directory to create (key, certificates, pinned root, agent.toml).
    #[arg(long, value_name = "DIR", env = "FLOTILLA_AGENT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The hub's QUIC address, HOST:PORT (`flotilla hub info` prints it).
    #[arg(long, value_name = "HOST:PORT")]
    pub hub: String,
    /// The one-time enrolment token (`flotilla device token create`).
    #[arg(long, value_name = "TOKEN", env = "FLOTILLA_ENROL_TOKEN")]
    pub token: String,
    /// SHA-256 fingerprint of the hub's device CA (64 hex digits).
    #[arg(long, value_name = "SHA256")]
    pub hub_ca_fingerprint: String,
    /// Enrol again even if DIR already holds an enrolment.
    #[arg(long)]
    pub force: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text, env = "FLOTILLA_OUTPUT")]
    pub output: OutputFormat,
}

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Data directory written by `enroll`.
    #[arg(
        long,
        value_name = "DIR",
        env = "FLOTILLA_AGENT_DATA_DIR",
        required_unless_present = "config"
    )]
    pub data_dir: Option<PathBuf>,
    /// Configuration file (default: DIR/agent.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Scoring API address (overrides `[serve] listen`; port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
}

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The agent's data directory.
    #[arg(long, value_name = "DIR", env = "FLOTILLA_AGENT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text, env = "FLOTILLA_OUTPUT")]
    pub output: OutputFormat,
}

/// Arguments of `conformance`.
#[derive(Debug, clap::Args)]
pub struct ConformanceArgs {
    /// Directories to search for test folders; each DIR is one suite, named after
    /// its last path component.
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Write per-test and per-operator results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Only run tests whose folder name contains this text.
    #[arg(long, value_name = "TEXT")]
    pub filter: Option<String>,
    /// Check pass counts per suite against this floor file (TOML: `suite = count`);
    /// the exit status then says whether every suite meets its floor.
    #[arg(long, value_name = "FILE")]
    pub floor: Option<PathBuf>,
    /// Print every test, not only failures.
    #[arg(long, short)]
    pub verbose: bool,
}

/// Output format of `conformance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Failures one per line, then the summary line.
    Text,
    /// The full report as JSON, then the summary line on stderr.
    Json,
}

/// Carries out `cli`; returns the exit code.
///
/// # Errors
///
/// Unreadable directories, report or floor files.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Conformance(args) => run_conformance(&args),
        Command::Enroll(args) => run_enroll(&args),
        Command::Run(args) => run_agent(&args),
        Command::Status(args) => Ok(run_status(&args)),
        Command::Serve(args) => run_serve(&args),
        Command::Batch(args) => Ok(crate::batch::command::run(&args)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,rustls=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run_enroll(args: &EnrollArgs) -> anyhow::Result<ExitCode> {
    use crate::enrol::{enrol, EnrolError, EnrolOptions};
    let opts = EnrolOptions {
        data_dir: args.data_dir.clone(),
        hub: args.hub.clone(),
        token: args.token.clone(),
        fingerprint: args.hub_ca_fingerprint.clone(),
        force: args.force,
    };
    match runtime()?.block_on(enrol(&opts)) {
        Ok(done) => {
            if args.output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                println!(
                    "enrolled as {} (root v{}); configuration in {}",
                    done.device_id,
                    done.root_version,
                    done.config.display()
                );
                println!(
                    "start it with: flotilla-agent run --data-dir {}",
                    args.data_dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            let code = match e {
                EnrolError::Untrusted { .. } => 1,
                EnrolError::Usage(_) => 2,
                EnrolError::Io { .. } => 3,
                EnrolError::Refused(_) => 4,
                EnrolError::Unreachable { .. } | EnrolError::BadAnswer(_) => 7,
            };
            Ok(ExitCode::from(code))
        }
    }
}

fn run_agent(args: &RunArgs) -> anyhow::Result<ExitCode> {
    init_logging();
    let path = match (&args.config, &args.data_dir) {
        (Some(c), _) => c.clone(),
        (None, Some(d)) => crate::config::DataFiles::new(d).config(),
        (None, None) => anyhow::bail!("give --data-dir or --config"),
    };
    let mut config = match crate::config::AgentConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(3));
        }
    };
    if let (Some(_), Some(d)) = (&args.config, &args.data_dir) {
        config.data_dir = d.clone();
    }
    if let Some(l) = args.listen {
        config.serve.listen = l;
    }
    let rt = runtime()?;
    rt.block_on(async move {
        crate::sync::Agent::open(config)?
            .run(shutdown_signal())
            .await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn run_status(args: &StatusArgs) -> ExitCode {
    let path = crate::config::DataFiles::new(&args.data_dir).status();
    match crate::sync::AgentStatus::read(&path) {
        Ok(s) => {
            if args.output == OutputFormat::Json {
                match serde_json::to_string_pretty(&s) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(3);
                    }
                }
            } else {
                print!("{}", s.text());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
    }
}

fn run_serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    use crate::serve::{self, local, Serving};
    init_logging();
    let loaded = match (&args.model, &args.bundle, &args.root) {
        (Some(model), _, _) => local::load_onnx_file(model, args.name.as_deref()),
        (None, Some(bundle), Some(root)) => load_bundle_here(bundle, root, args.name.as_deref()),
        _ => anyhow::bail!("give --model FILE, or --bundle FILE with --root FILE"),
    };
    let local = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let serving = Serving::new(args.serve_config());
    local.install(&serving);
    tracing::info!(model = %local.name, target = %local.target, "model loaded");
    let rt = runtime()?;
    let listen = args.listen;
    let result = rt.block_on(async move {
        let (addr, served) = serve::bind(serving, listen, shutdown_signal())
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        println!("scoring listening on http://{addr}");
        served.await.context("serving")
    });
    // A run still going on a blocking thread is not waited for past this.
    rt.shutdown_timeout(Duration::from_secs(5));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Verifies, stages and trials `bundle` in a scratch dir, removed once loaded.
fn load_bundle_here(
    bundle: &std::path::Path,
    root: &std::path::Path,
    name: Option<&str>,
) -> Result<crate::serve::local::LocalModel, String> {
    let work = std::env::temp_dir().join(format!("flotilla-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let loaded = crate::serve::local::load_bundle(
        bundle,
        root,
        &work,
        name,
        flotilla_protocol::time::UtcTime(now),
    );
    // The model is in memory now; the staged files are not needed.
    let _ = std::fs::remove_dir_all(&work);
    loaded
}

fn run_conformance(args: &ConformanceArgs) -> anyhow::Result<ExitCode> {
    let floor = match &args.floor {
        Some(path) => Some(Floor::read(path)?),
        None => None,
    };
    let tol = Tolerance::default();
    let mut report = conformance::Report::new(tol);
    for dir in &args.dirs {
        let suite = conformance::run_suite(dir, args.filter.as_deref(), tol)
            .with_context(|| format!("running suite {}", dir.display()))?;
        if args.output == OutputFormat::Text {
            for t in &suite.tests {
                if args.verbose || t.status == conformance::Status::Failed {
                    println!("{}", t.line());
                }
            }
        }
        report.add_suite(suite);
    }
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report.to_json())?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    let summary = report.summary_line();
    if args.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
        eprintln!("{summary}");
    } else {
        for s in report.suites() {
            println!(
                "suite {}: {} passed, {} failed, {} skipped",
                s.name,
                s.passed(),
                s.failed(),
                s.skipped()
            );
        }
    }
    let ok = match &floor {
        Some(floor) => {
            let shortfalls = floor.check(&report);
            for s in &shortfalls {
                println!("below floor: {s}");
            }
            shortfalls.is_empty()
        }
        None => report.failed() == 0,
    };
    if args.output == OutputFormat::Text {
        println!("{summary}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
