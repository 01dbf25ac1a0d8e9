//! The `flotilla` operator CLI: argument parsing, output format, exit codes.
//!
//! Each subcommand lives in its own file and returns a value that prints both
//! as text for people and as JSON (`--output json`) for scripts. Errors are one
//! line on stderr and an exit code from [`exit`].

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod bundle;
mod demo;
mod keys;

/// Exit codes, documented in `flotilla --help`.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Verification failed: the bundle or metadata is not trustworthy.
    pub const UNTRUSTED: u8 = 1;
    /// Bad usage: unknown flag, missing argument, invalid value.
    pub const USAGE: u8 = 2;
    /// Input or environment problem: missing file, unreadable keys, bad model.
    pub const INPUT: u8 = 3;
}

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  verification failed: the bundle or its metadata is not trustworthy
  2  bad usage (unknown flag, missing or invalid argument)
  3  input problem (missing or unreadable file, bad keys directory, bad model)

Environment:
  FLOTILLA_OUTPUT   default for --output (text or json)
  FLOTILLA_KEYS     default for --keys
  FLOTILLA_LOG      log filter, e.g. info or flotilla_hub=debug (logs go to stderr)

Start here:
  flotilla demo                         keys, pack and verify a generated model
  flotilla keys init --dir keys         create a fleet's trust root
  flotilla bundle pack model.onnx --name fraud --version 1 --keys keys -o fraud-1.bundle
  flotilla bundle verify fraud-1.bundle --root keys/root.json";

/// Operate a Flotilla fleet: trust keys, signed model bundles.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Output format: human-readable text, or JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text, env = "FLOTILLA_OUTPUT")]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable text.
    Text,
    /// One JSON document on stdout.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and manage the fleet's signing keys and root of trust.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Pack, inspect and verify signed model bundles.
    #[command(subcommand)]
    Bundle(Box<bundle::BundleCommand>),
    /// Run the whole path on a generated model: keys, pack, inspect, verify.
    Demo(demo::DemoArgs),
}

/// A failed command: the line to print and the exit code.
#[derive(Debug)]
pub struct CliError {
    /// Exit code from [`exit`].
    pub code: u8,
    /// One line for a person.
    pub message: String,
}

impl CliError {
    fn input(e: impl std::fmt::Display) -> Self {
        Self {
            code: exit::INPUT,
            message: e.to_string(),
        }
    }

    fn untrusted(e: impl std::fmt::Display) -> Self {
        Self {
            code: exit::UNTRUSTED,
            message: e.to_string(),
        }
    }
}

/// What a command produced, printable both ways.
pub(crate) trait Report: serde::Serialize {
    /// The text form.
    fn text(&self) -> String;
}

fn emit(output: Output, r: &impl Report) {
    match output {
        Output::Text => println!("{}", r.text()),
        Output::Json => match serde_json::to_string_pretty(r) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot encode output as JSON: {e}"),
        },
    }
}

/// Entry point of the `flotilla` binary.
pub fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let output = cli.output;
    let result = match cli.command {
        Command::Keys(c) => keys::run(c, output),
        Command::Bundle(c) => bundle::run(*c, output),
        Command::Demo(a) => demo::run(a, output),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            if output == Output::Json {
                println!(
                    "{}",
                    serde_json::json!({"error": e.message, "exit_code": e.code})
                );
            }
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
