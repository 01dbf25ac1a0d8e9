//! `flotilla login`: check a token against a hub and remember both in the
//! user's config file (mode 0600) for later commands.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::client::HubClient;
use super::credentials::{self, HubFlags};
use super::{emit, exit, CliError, Output, Report};
use crate::api::types::{Role, WhoAmI};

#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    /// Read the token from the first line of stdin instead of --token, so it
    /// stays out of shell history and the process list.
    #[arg(long)]
    token_stdin: bool,
}

/// What `login` prints.
#[derive(Debug, Serialize)]
struct LoggedIn {
    hub: String,
    name: String,
    role: Role,
    config: PathBuf,
}

impl Report for LoggedIn {
    fn text(&self) -> String {
        let role = match self.role {
            Role::Viewer => "viewer: can read, not change",
            Role::Operator => "operator: can register and change models",
            Role::Admin => "admin: can do everything, including tokens",
        };
        format!(
            "logged in to {} as {} ({role})\ntoken saved in {} (mode 0600)",
            self.hub,
            self.name,
            self.config.display()
        )
    }
}

fn read_stdin_token() -> Result<String, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("token: ");
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::input(format!("reading the token from stdin: {e}")))?;
    Ok(line.trim().to_string())
}

pub(crate) fn run(a: LoginArgs, output: Output, flags: &HubFlags) -> Result<(), CliError> {
    let token = if a.token_stdin {
        Some(read_stdin_token()?)
    } else {
        flags.token.clone()
    }
    .filter(|t| !t.trim().is_empty())
    .ok_or_else(|| CliError {
        code: exit::USAGE,
        message: "login needs a token: --token TOKEN, FLOTILLA_TOKEN, or --token-stdin \
                  (a new hub writes its first admin token to DATA_DIR/admin-token; an admin \
                  makes more with `flotilla token create NAME --role operator`)"
            .into(),
    })?;
    let path = credentials::config_path(|k| std::env::var_os(k)).ok_or_else(|| {
        CliError::input(
            "no place for the config file: set HOME, XDG_CONFIG_HOME or FLOTILLA_CONFIG",
        )
    })?;
    // A broken old file is about to be replaced; its hub is still the best
    // guess when --hub is not given.
    let saved = credentials::load(&path).ok().flatten();
    let flags = HubFlags {
        hub: flags.hub.clone(),
        token: Some(token.clone()),
    };
    let conn = credentials::resolve(&flags, saved.as_ref().map(|s| (s, path.as_path())))?;
    let hub = conn.hub.clone();
    let client = HubClient::new(conn);
    let me: WhoAmI = client
        .get("/api/v1/whoami", &[])
        .map_err(|e| client.cli_error(e))
        .map_err(|mut e| {
            if e.code == exit::DENIED {
                e.message = format!("the hub at {hub} refused the token: {}", e.message);
            }
            e
        })?;
    credentials::save(&path, &hub, &token)?;
    emit(
        output,
        &LoggedIn {
            hub,
            name: me.name,
            role: me.role,
            config: path,
        },
    );
    Ok(())
}
