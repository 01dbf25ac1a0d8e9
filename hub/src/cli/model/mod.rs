//! `flotilla model …`: the hub's model registry from the command line.
//!
//! Versions are named `NAME:VERSION` everywhere (`fraud:3`); `model show`
//! takes either `NAME` (the model and its versions) or `NAME:VERSION` (one
//! version in full). Each subcommand is one REST call or a short sequence of
//! them; the hub does the real work and checks everything again.
//!
//! # Layout
//! - [`syntax`]: parsing of `NAME:VERSION`, tags, metrics and filters.
//! - [`view`]: the text form of answers.
//! - `register`, `query`, `change`, `download`: the subcommands.

use clap::{Args, Subcommand};

use super::client::HubClient;
use super::credentials::{self, HubFlags};
use super::{CliError, Output};

mod change;
mod download;
mod query;
mod register;
pub(crate) mod syntax;
pub(crate) mod view;

#[derive(Debug, Subcommand)]
pub(crate) enum ModelCommand {
    /// Upload an ONNX model and register it as the model's next version.
    ///
    /// The file (and the optional reference dataset) go up in 8 MiB pieces; if
    /// the link breaks, the upload resumes where the hub stopped, not from zero.
    /// The hub then reads the model's signature, cuts it into chunks shared
    /// with earlier versions, hashes and signs it. Prints the new version.
    #[command(after_help = "\
Examples:
  flotilla model register fraud.onnx --name fraud --reason \"retrained on March data\"
  flotilla model register fraud.onnx --name fraud --dataset reference.csv \\
      --tag stage=canary --metric auc=0.931 --source-run mlflow:8f2c \\
      --parent-version 2 --reason \"new features\"")]
    Register(Box<register::RegisterArgs>),
    /// List models, optionally only those with a version matching filters.
    #[command(after_help = "\
Examples:
  flotilla model list
  flotilla model list --name fraud --tag stage=prod --metric 'auc>=0.9'
  flotilla model list --all --output json")]
    List(query::ListArgs),
    /// Show a model and its versions (NAME), or one version in full
    /// (NAME:VERSION).
    #[command(after_help = "\
Examples:
  flotilla model show fraud       the model and a table of its versions
  flotilla model show fraud:3     version 3: file, digests, signature, tags, lineage")]
    Show(query::ShowArgs),
    /// List a model's versions, optionally filtered by tag and metric.
    #[command(after_help = "\
Examples:
  flotilla model versions fraud
  flotilla model versions fraud --tag stage=prod --metric 'auc>=0.9' --all")]
    Versions(query::VersionsArgs),
    /// Set tags on a version (KEY=VALUE ...); existing keys are overwritten.
    #[command(after_help = "\
Example:
  flotilla model tag fraud:3 stage=prod owner=risk --reason \"passed canary\"")]
    Tag(change::TagArgs),
    /// Remove tags from a version, by key.
    #[command(after_help = "\
Example:
  flotilla model untag fraud:3 stage --reason \"rolled back\"")]
    Untag(change::UntagArgs),
    /// Archive a version: kept for the record, no longer deployable.
    #[command(after_help = "\
Example:
  flotilla model archive fraud:1 --reason \"superseded by fraud:3\"")]
    Archive(change::ReasonArgs),
    /// Delete a version. The hub refuses (exit 6) while a deployment uses it.
    #[command(after_help = "\
Example:
  flotilla model delete fraud:2 --reason \"trained on leaked labels\"")]
    Delete(change::ReasonArgs),
    /// Download a version's model file, verifying its SHA-256 before it is
    /// put in place.
    ///
    /// The file streams into a temporary file beside FILE, is hashed on the
    /// way, and is renamed to FILE only if the digest matches the one the hub
    /// recorded at registration; on a mismatch nothing is written and the
    /// exit code is 1.
    #[command(after_help = "\
Example:
  flotilla model download fraud:3 -o fraud-3.onnx")]
    Download(download::DownloadArgs),
}

/// The `--tag` / `--metric` / paging options of the listing commands.
#[derive(Debug, Args)]
pub(crate) struct FilterArgs {
    /// Only versions with this tag, KEY=VALUE; repeat to require several.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = syntax::tag_filter)]
    tags: Vec<syntax::TagFilter>,
    /// Only versions whose metric compares true, e.g. 'auc>=0.9' (operators
    /// >= <= > < =; quote it for the shell); repeat to require several.
    #[arg(long = "metric", value_name = "NAME>=NUMBER", value_parser = syntax::metric_filter)]
    metrics: Vec<syntax::MetricFilter>,
    /// Page size (the hub caps it).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
    /// Continue from the cursor a previous page printed.
    #[arg(long, conflicts_with = "all")]
    cursor: Option<String>,
    /// Follow every page and print them as one.
    #[arg(long)]
    all: bool,
}

impl FilterArgs {
    /// The query pairs, without the cursor.
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        q.extend(self.tags.iter().map(|t| ("tag", t.0.clone())));
        q.extend(self.metrics.iter().map(|m| ("metric", m.0.clone())));
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        q
    }
}

/// A client for the resolved hub.
pub(crate) fn connect(flags: &HubFlags) -> Result<HubClient, CliError> {
    Ok(HubClient::new(credentials::connection(flags)?))
}

pub(crate) fn run(cmd: ModelCommand, output: Output, flags: &HubFlags) -> Result<(), CliError> {
    let client = connect(flags)?;
    match cmd {
        ModelCommand::Register(a) => register::run(&client, *a, output),
        ModelCommand::List(a) => query::list(&client, a, output),
        ModelCommand::Show(a) => query::show(&client, a, output),
        ModelCommand::Versions(a) => query::versions(&client, a, output),
        ModelCommand::Tag(a) => change::tag(&client, a, output),
        ModelCommand::Untag(a) => change::untag(&client, a, output),
        ModelCommand::Archive(a) => change::archive(&client, a, output),
        ModelCommand::Delete(a) => change::delete(&client, a, output),
        ModelCommand::Download(a) => download::run(&client, a, output),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::super::Cli;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_model_command_parses_its_documented_form() {
        for args in [
            &[
                "model", "register", "m.onnx", "--name", "fraud", "--tag", "a=b", "--metric",
                "auc=0.9", "--reason", "r",
            ][..],
            &[
                "model",
                "list",
                "--tag",
                "stage=prod",
                "--metric",
                "auc>=0.9",
                "--all",
            ],
            &["model", "show", "fraud"],
            &["model", "show", "fraud:3"],
            &[
                "model", "versions", "fraud", "--limit", "5", "--cursor", "c",
            ],
            &["model", "tag", "fraud:3", "a=b", "c=d", "--reason", "r"],
            &["model", "untag", "fraud:3", "a", "--reason", "r"],
            &["model", "archive", "fraud:3", "--reason", "r"],
            &["model", "delete", "fraud:3", "--reason", "r"],
            &["model", "download", "fraud:3", "-o", "f.onnx"],
            &[
                "--hub",
                "http://h:1",
                "--token",
                "t",
                "audit",
                "list",
                "--since",
                "4",
            ],
            &["audit", "verify", "--output", "json"],
            &["token", "create", "ci", "--role", "operator"],
            &["login", "--token-stdin"],
        ] {
            let argv = std::iter::once("flotilla").chain(args.iter().copied());
            if let Err(e) = Cli::try_parse_from(argv) {
                panic!("{args:?}: {e}");
            }
        }
    }

    #[test]
    fn bad_syntax_is_a_usage_error_before_any_request() {
        for args in [
            &["model", "tag", "fraud", "a=b", "--reason", "r"][..],
            &["model", "tag", "fraud:3", "a", "--reason", "r"],
            &["model", "list", "--metric", "auc>>0.9"],
            &[
                "model", "register", "m.onnx", "--name", "a/b", "--reason", "r",
            ],
            &[
                "model", "register", "m.onnx", "--name", "fraud", "--metric", "auc=x", "--reason",
                "r",
            ],
            &["model", "archive", "fraud:3"],
            &["model", "list", "--all", "--cursor", "c"],
        ] {
            let argv = std::iter::once("flotilla").chain(args.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
        }
    }
}
