//! `flotilla model list|show|versions`: read the registry.

use clap::Args;
use serde::de::DeserializeOwned;

use super::super::client::{segment, HubClient};
use super::super::{emit, CliError, Output};
use super::syntax::{self, ModelRef};
use super::view::ModelDetail;
use super::FilterArgs;
use crate::api::types::{ModelView, Page, VersionView};

/// Most pages `--all` follows: a guard against a hub whose cursor never ends.
const MAX_PAGES: usize = 10_000;

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only models whose name contains this.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    filters: FilterArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// NAME for the model and its versions, NAME:VERSION for one version.
    #[arg(value_name = "NAME[:VERSION]")]
    model: ModelRef,
}

#[derive(Debug, Args)]
pub(crate) struct VersionsArgs {
    /// Model name.
    #[arg(value_parser = syntax::model_name)]
    name: String,
    #[command(flatten)]
    filters: FilterArgs,
}

/// Fetches one page, or with `all` every page joined into one.
fn pages<T: DeserializeOwned>(
    client: &HubClient,
    path: &str,
    query: Vec<(&'static str, String)>,
    cursor: Option<String>,
    all: bool,
) -> Result<Page<T>, CliError> {
    let mut items = Vec::new();
    let mut cursor = cursor;
    for _ in 0..MAX_PAGES {
        let mut q = query.clone();
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page: Page<T> = client.get(path, &q).map_err(|e| client.cli_error(e))?;
        items.extend(page.items);
        match page.next_cursor {
            Some(next) if all => {
                if cursor.as_deref() == Some(next.as_str()) {
                    break; // a hub repeating its cursor would loop forever
                }
                cursor = Some(next);
            }
            next => {
                return Ok(Page {
                    items,
                    next_cursor: next,
                })
            }
        }
    }
    Ok(Page {
        items,
        next_cursor: None,
    })
}

pub(super) fn list(client: &HubClient, a: ListArgs, output: Output) -> Result<(), CliError> {
    let mut q = a.filters.query();
    if let Some(n) = a.name {
        q.push(("name", n));
    }
    let page: Page<ModelView> =
        pages(client, "/api/v1/models", q, a.filters.cursor, a.filters.all)?;
    emit(output, &page);
    Ok(())
}

pub(super) fn versions(
    client: &HubClient,
    a: VersionsArgs,
    output: Output,
) -> Result<(), CliError> {
    let path = format!("/api/v1/models/{}/versions", segment(&a.name));
    let page: Page<VersionView> = pages(
        client,
        &path,
        a.filters.query(),
        a.filters.cursor,
        a.filters.all,
    )?;
    emit(output, &page);
    Ok(())
}

pub(super) fn show(client: &HubClient, a: ShowArgs, output: Output) -> Result<(), CliError> {
    match a.model {
        ModelRef::Version(v) => {
            let view: VersionView = client
                .get(&v.path(), &[])
                .map_err(|e| client.cli_error(e))?;
            emit(output, &view);
        }
        ModelRef::Model(name) => {
            let model: ModelView = client
                .get(&format!("/api/v1/models/{}", segment(&name)), &[])
                .map_err(|e| client.cli_error(e))?;
            let path = format!("/api/v1/models/{}/versions", segment(&name));
            let versions: Page<VersionView> = pages(client, &path, Vec::new(), None, true)?;
            emit(
                output,
                &ModelDetail {
                    model,
                    versions: versions.items,
                },
            );
        }
    }
    Ok(())
}
