//! `flotilla model tag|untag|archive|delete`: change a version, with a reason
//! for the audit log.

use clap::Args;

use super::super::client::HubClient;
use super::super::{emit, CliError, Output, Report};
use super::syntax::{self, VersionRef};
use super::view::Changed;
use crate::api::types::{ReasonBody, UpdateTags, VersionView};

#[derive(Debug, Args)]
pub(crate) struct TagArgs {
    /// The version, NAME:VERSION.
    #[arg(value_name = "NAME:VERSION")]
    version: VersionRef,
    /// Tags to set, KEY=VALUE.
    #[arg(value_name = "KEY=VALUE", required = true, value_parser = syntax::tag)]
    tags: Vec<(String, String)>,
    /// Why (kept in the audit log).
    #[arg(long)]
    reason: String,
}

#[derive(Debug, Args)]
pub(crate) struct UntagArgs {
    /// The version, NAME:VERSION.
    #[arg(value_name = "NAME:VERSION")]
    version: VersionRef,
    /// Tag keys to remove.
    #[arg(value_name = "KEY", required = true, value_parser = syntax::tag_key)]
    keys: Vec<String>,
    /// Why (kept in the audit log).
    #[arg(long)]
    reason: String,
}

#[derive(Debug, Args)]
pub(crate) struct ReasonArgs {
    /// The version, NAME:VERSION.
    #[arg(value_name = "NAME:VERSION")]
    version: VersionRef,
    /// Why (kept in the audit log).
    #[arg(long)]
    reason: String,
}

fn update(
    client: &HubClient,
    v: &VersionRef,
    body: &UpdateTags,
    what: &'static str,
    output: Output,
) -> Result<(), CliError> {
    let version: VersionView = client
        .send("PATCH", &format!("{}/tags", v.path()), body)
        .map_err(|e| client.cli_error(e))?;
    emit(output, &Changed { version, what });
    Ok(())
}

pub(super) fn tag(client: &HubClient, a: TagArgs, output: Output) -> Result<(), CliError> {
    let body = UpdateTags {
        set: a.tags.into_iter().collect(),
        remove: Vec::new(),
        reason: a.reason,
    };
    update(client, &a.version, &body, "tagged", output)
}

pub(super) fn untag(client: &HubClient, a: UntagArgs, output: Output) -> Result<(), CliError> {
    let body = UpdateTags {
        set: Default::default(),
        remove: a.keys,
        reason: a.reason,
    };
    update(client, &a.version, &body, "untagged", output)
}

pub(super) fn archive(client: &HubClient, a: ReasonArgs, output: Output) -> Result<(), CliError> {
    let version: VersionView = client
        .send(
            "POST",
            &format!("{}/archive", a.version.path()),
            &ReasonBody { reason: a.reason },
        )
        .map_err(|e| client.cli_error(e))?;
    emit(
        output,
        &Changed {
            version,
            what: "archived",
        },
    );
    Ok(())
}

/// What `delete` prints.
#[derive(Debug, serde::Serialize)]
struct Deleted {
    name: String,
    version: u64,
    deleted: bool,
}

impl Report for Deleted {
    fn text(&self) -> String {
        format!("deleted {}:{}", self.name, self.version)
    }
}

pub(super) fn delete(client: &HubClient, a: ReasonArgs, output: Output) -> Result<(), CliError> {
    client
        .delete(&a.version.path(), Some(&ReasonBody { reason: a.reason }))
        .map_err(|e| client.cli_error(e))?;
    emit(
        output,
        &Deleted {
            name: a.version.name,
            version: a.version.version,
            deleted: true,
        },
    );
    Ok(())
}
