//! `flotilla token create|list|revoke`: API tokens for people and scripts.
//! Admin only; the hub stores tokens hashed, so a secret is shown once.

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use super::client::{segment, HubClient};
use super::credentials::{self, HubFlags};
use super::model::syntax;
use super::text::table;
use super::{emit, CliError, Output, Report};
use crate::api::types::{CreateToken, Role, TokenView};

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token and print its secret, once.
    #[command(after_help = "\
Examples:
  flotilla token create ci-pipeline --role operator
  flotilla token create dashboard --role viewer --output json | jq -r .token")]
    Create(CreateArgs),
    /// List tokens: holder names, roles, creation times (never secrets).
    #[command(after_help = "\
Example:
  flotilla token list --output json")]
    List,
    /// Revoke a token by holder name; it stops working at once.
    #[command(after_help = "\
Example:
  flotilla token revoke ci-pipeline")]
    Revoke(RevokeArgs),
}

/// Token roles.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    /// Reads everything, changes nothing.
    Viewer,
    /// Registers, tags, archives and deletes models.
    Operator,
    /// Everything, including tokens.
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Operator => Role::Operator,
            RoleArg::Admin => Role::Admin,
        }
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
    }
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Holder name (A-Z a-z 0-9 - _ .); shows as the actor in the audit log.
    #[arg(value_parser = syntax::model_name)]
    name: String,
    /// What the token may do.
    #[arg(long, value_enum)]
    role: RoleArg,
}

#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// Holder name of the token.
    name: String,
}

/// A token just created.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Created(TokenView);

impl Report for Created {
    fn text(&self) -> String {
        let t = &self.0;
        format!(
            "created token {} ({})\n  secret: {}\n  it is shown only now; hand it over safely, e.g. \
             `flotilla login --token-stdin`",
            t.name,
            role_name(t.role),
            t.token.as_deref().unwrap_or("(the hub sent none)")
        )
    }
}

/// The token list.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Tokens(Vec<TokenView>);

impl Report for Tokens {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "no tokens".into();
        }
        table(
            &["NAME", "ROLE", "CREATED"],
            self.0
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        role_name(t.role).to_string(),
                        t.created_at.clone(),
                    ]
                })
                .collect(),
        )
    }
}

/// A revoked token.
#[derive(Debug, Serialize)]
struct Revoked {
    name: String,
    revoked: bool,
}

impl Report for Revoked {
    fn text(&self) -> String {
        format!("revoked token {}", self.name)
    }
}

pub(crate) fn run(cmd: TokenCommand, output: Output, flags: &HubFlags) -> Result<(), CliError> {
    let client = HubClient::new(credentials::connection(flags)?);
    let err = |e| client.cli_error(e);
    match cmd {
        TokenCommand::Create(a) => {
            let body = CreateToken {
                name: a.name,
                role: a.role.into(),
            };
            let t: TokenView = client.send("POST", "/api/v1/tokens", &body).map_err(err)?;
            emit(output, &Created(t));
        }
        TokenCommand::List => {
            let ts: Vec<TokenView> = client.get("/api/v1/tokens", &[]).map_err(err)?;
            emit(output, &Tokens(ts));
        }
        TokenCommand::Revoke(a) => {
            client
                .delete(&format!("/api/v1/tokens/{}", segment(&a.name)), None::<&()>)
                .map_err(err)?;
            emit(
                output,
                &Revoked {
                    name: a.name,
                    revoked: true,
                },
            );
        }
    }
    Ok(())
}
