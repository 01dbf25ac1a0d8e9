//! The `flotilla` operator CLI: argument parsing, output format, exit codes.
//!
//! Each subcommand lives in its own file and returns a value that prints both
//! as text for people and as JSON (`--output json`) for scripts. Errors are one
//! line on stderr and an exit code from [`exit`].

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod alerts;
mod audit;
mod bundle;
mod client;
mod credentials;
mod demo;
mod demo_fleet;
mod device;
mod endpoint;
mod events;
mod keys;
mod login;
mod metrics;
mod model;
mod progress;
mod text;
mod token;
mod upload;
mod webhook;

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
    /// The hub refused the credentials (HTTP 401 or 403).
    pub const DENIED: u8 = 4;
    /// The thing asked for does not exist (HTTP 404).
    pub const NOT_FOUND: u8 = 5;
    /// The request conflicts with the hub's state (HTTP 409), e.g. deleting a
    /// version a deployment uses.
    pub const CONFLICT: u8 = 6;
    /// The hub could not be reached or failed (connection error, HTTP 5xx).
    pub const UNAVAILABLE: u8 = 7;
}

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  verification failed: the bundle or its metadata is not trustworthy
  2  bad usage (unknown flag, missing or invalid argument)
  3  input problem (missing or unreadable file, bad keys directory, bad model)
  4  the hub refused the credentials (401/403)
  5  not found (404)
  6  conflict with the hub's state (409), e.g. deleting a deployed version
  7  hub unreachable or failing (connection error, 5xx)

Environment:
  FLOTILLA_OUTPUT   default for --output (text or json)
  FLOTILLA_KEYS     default for --keys
  FLOTILLA_LOG      log filter, e.g. info or flotilla_hub=debug (logs go to stderr)
  FLOTILLA_HUB      default for --hub
  FLOTILLA_TOKEN    default for --token
  FLOTILLA_CONFIG   the login config file (default $XDG_CONFIG_HOME/flotilla/config.toml,
                    else ~/.config/flotilla/config.toml)

Hub and token, first found wins: --hub/--token, FLOTILLA_HUB/FLOTILLA_TOKEN, the
file `flotilla login` writes, then http://127.0.0.1:8440 without a token. A saved
token is only sent to the hub it was saved with.

Start here:
  flotilla demo                         keys, pack and verify a generated model
  flotilla keys init --dir keys         create a fleet's trust root
  flotilla bundle pack model.onnx --name fraud --version 1 --keys keys -o fraud-1.bundle
  flotilla bundle verify fraud-1.bundle --root keys/root.json
  flotilla login --hub http://hub:8440 --token-stdin < token.txt
  flotilla model register fraud.onnx --name fraud --reason \"first model\"
  flotilla model list
  flotilla device metrics DEVICE        a device's telemetry
  flotilla drift ENDPOINT               input drift across the fleet
  flotilla events tail --follow         lifecycle events as they happen
  flotilla webhook add URL --events drift.detected,alert.fired";

/// Operate a Flotilla fleet: trust keys, signed model bundles.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Output format: human-readable text, or JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text, env = "FLOTILLA_OUTPUT")]
    output: Output,
    /// Hub base URL, e.g. http://hub.example:8440 (default: the one saved by
    /// `flotilla login`, else http://127.0.0.1:8440).
    #[arg(long, global = true, env = "FLOTILLA_HUB", value_name = "URL")]
    hub: Option<String>,
    /// API token (default: the one saved by `flotilla login` for that hub).
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
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
    /// Check a token against a hub and save both for later commands.
    ///
    /// Asks the hub who the token belongs to, then writes the hub URL and
    /// token to the config file (mode 0600, see FLOTILLA_CONFIG), so later
    /// commands need neither --hub nor --token.
    #[command(after_help = "\
Examples:
  flotilla login --hub http://hub.example:8440 --token fl_...
  flotilla login --hub http://hub.example:8440 --token-stdin < token.txt
  flotilla login --token \"$(cat DATA_DIR/admin-token)\"   the local hub of `flotilla-hub serve`")]
    Login(login::LoginArgs),
    /// The hub's model registry: register, list, show, tag, archive, delete,
    /// download.
    #[command(subcommand)]
    Model(Box<model::ModelCommand>),
    /// The hub's hash-chained audit log: list entries, verify the chain.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// API tokens and their roles (admin only).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Endpoints: deployments of model versions, traffic weights, mirror, device selector.
    #[command(subcommand)]
    Endpoint(endpoint::EndpointCommand),
    /// Devices: enrolment tokens, list, labels, revocation.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// The hub itself.
    #[command(subcommand)]
    Hub(HubCommand),
    /// Per-feature drift of an endpoint (PSI, JS, KS) merged across devices.
    Drift(metrics::DriftArgs),
    /// Alerts that fired, and the rules in effect.
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
    /// The hub's event log: list, or tail and follow it live.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Webhooks that receive events as signed JSON POSTs.
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
}

#[derive(Debug, Subcommand)]
enum HubCommand {
    /// Print the hub's QUIC sync address and the device CA fingerprint
    /// technicians pin when they enrol a node.
    #[command(after_help = "Example:\n  flotilla hub info\n  flotilla hub info --output json")]
    Info,
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
    crate::init_logging("warn,rumqttd=off");
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
    let hub = credentials::HubFlags {
        hub: cli.hub,
        token: cli.token,
    };
    let result = match cli.command {
        Command::Keys(c) => keys::run(c, output),
        Command::Bundle(c) => bundle::run(*c, output),
        Command::Demo(a) => demo::run(a, output),
        Command::Login(a) => login::run(a, output, &hub),
        Command::Model(c) => model::run(*c, output, &hub),
        Command::Audit(c) => audit::run(c, output, &hub),
        Command::Token(c) => token::run(c, output, &hub),
        Command::Endpoint(c) => endpoint::run(c, output, &hub),
        Command::Device(c) => device::run(c, output, &hub),
        Command::Hub(HubCommand::Info) => device::info(output, &hub),
        Command::Drift(a) => metrics::drift(a, output, &hub),
        Command::Alerts(c) => alerts::run(c, output, &hub),
        Command::Events(c) => events::run(c, output, &hub),
        Command::Webhook(c) => webhook::run(c, output, &hub),
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
