//! `flotilla model register`: upload a model (and a reference dataset), then
//! register the next version from the finished uploads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;

use super::super::client::{segment, HubClient, HubError};
use super::super::progress::Progress;
use super::super::upload::upload_path;
use super::super::{emit, CliError, Output};
use super::syntax;
use super::view::Registered;
use crate::api::types::{LineageBody, RegisterVersion, VersionView};

#[derive(Debug, Args)]
pub(crate) struct RegisterArgs {
    /// The ONNX model file.
    model: PathBuf,
    /// Model name (A-Z a-z 0-9 - _ .); the hub assigns the next version.
    #[arg(long, value_parser = syntax::model_name)]
    name: String,
    /// A reference dataset (CSV with a header row): the drift baseline.
    #[arg(long, value_name = "FILE.csv")]
    dataset: Option<PathBuf>,
    /// Free text about this version.
    #[arg(long, default_value = "")]
    description: String,
    /// A tag, KEY=VALUE; repeat for more.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = syntax::tag)]
    tags: Vec<(String, String)>,
    /// A metric, KEY=NUMBER (e.g. auc=0.93); repeat for more.
    #[arg(long = "metric", value_name = "KEY=NUMBER", value_parser = syntax::metric)]
    metrics: Vec<(String, f64)>,
    /// Training run or pipeline that produced the model.
    #[arg(long)]
    source_run: Option<String>,
    /// Digest of the training dataset.
    #[arg(long)]
    dataset_digest: Option<String>,
    /// The version this one derives from.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    parent_version: Option<u64>,
    /// Why this version is registered (kept in the audit log).
    #[arg(long)]
    reason: String,
}

fn check_file(path: &Path) -> Result<(), CliError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(CliError::input(format!("{}: not a file", path.display()))),
        Err(e) => Err(CliError::input(format!("{}: {e}", path.display()))),
    }
}

fn upload(client: &HubClient, path: &Path, output: Output) -> Result<String, CliError> {
    let size = std::fs::metadata(path).map(|m| m.len()).ok();
    let label = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bar = Progress::bytes(output, &format!("upload {label}"), size);
    let done = upload_path(client, path, &mut |e| bar.upload_event(e));
    bar.finish();
    Ok(done?.id)
}

pub(super) fn run(client: &HubClient, a: RegisterArgs, output: Output) -> Result<(), CliError> {
    // Check every local input before sending a byte.
    check_file(&a.model)?;
    if let Some(d) = &a.dataset {
        check_file(d)?;
    }
    let model_upload = upload(client, &a.model, output)?;
    let dataset_upload = match &a.dataset {
        Some(d) => Some(upload(client, d, output)?),
        None => None,
    };
    let body = RegisterVersion {
        upload: model_upload,
        dataset_upload,
        description: a.description,
        tags: a.tags.into_iter().collect::<BTreeMap<_, _>>(),
        metrics: a.metrics.into_iter().collect::<BTreeMap<_, _>>(),
        lineage: LineageBody {
            source_run: a.source_run,
            dataset_digest: a.dataset_digest,
            parent_version: a.parent_version,
        },
        reason: a.reason,
    };
    let bar = Progress::spinner(output, "the hub is chunking, hashing and signing");
    let path = format!("/api/v1/models/{}/versions", segment(&a.name));
    let answer: Result<VersionView, HubError> = client.send_slow(&path, &body);
    bar.finish();
    match answer {
        Ok(v) => {
            emit(output, &Registered(v));
            Ok(())
        }
        // Registration is not idempotent, so it is never retried; after a broken
        // connection the version may exist anyway.
        Err(e @ HubError::Transport { .. }) => {
            let mut err = client.cli_error(e);
            err.message = format!(
                "{} The hub may still have registered the version; check with \
                 `flotilla model versions {}` before registering again.",
                err.message, a.name
            );
            Err(err)
        }
        Err(e) => Err(client.cli_error(e)),
    }
}
