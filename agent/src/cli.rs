//! The `flotilla-agent` command line.
//!
//! Each subcommand is a variant of [`Command`]; [`run`] carries it out and returns
//! the process exit code. This module only wires arguments to library calls.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

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
    }
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
