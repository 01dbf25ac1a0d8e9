//! `flotilla keys …`: the fleet's root of trust.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{emit, CliError, Output, Report};
use crate::keystore::{self, InitReport, KeystoreError};

#[derive(Debug, Subcommand)]
pub(super) enum KeysCommand {
    /// Create offline root keys, online role keys and root.json version 1.
    ///
    /// Root keys sign only root.json; keep them offline (a safe, an HSM, an
    /// air-gapped laptop). The online keys (targets, snapshot, timestamp,
    /// director) are what the hub signs with day to day. Private keys are
    /// written with mode 0600.
    Init(InitArgs),
}

#[derive(Debug, Args)]
pub(super) struct InitArgs {
    /// Directory to create the keys in (must not already hold a root.json).
    #[arg(long)]
    dir: PathBuf,
    /// How many root keys must sign a new root.json.
    #[arg(long, default_value_t = 1)]
    threshold: u64,
    /// How many root keys to create.
    #[arg(long, default_value_t = 1)]
    keys: u64,
}

impl Report for InitReport {
    fn text(&self) -> String {
        let mut s = format!(
            "created root.json v1 ({} of {} root keys, expires {})\n  root:   {}\n",
            self.threshold,
            self.root_keys.len(),
            self.expires,
            self.root_path.display()
        );
        for p in &self.root_keys {
            s += &format!("  offline root key: {}\n", p.display());
        }
        for p in &self.online_keys {
            s += &format!("  online key:       {}\n", p.display());
        }
        s += "warning: move root-keys/ offline; the hub needs only online/ and root.json";
        s
    }
}

pub(super) fn run(cmd: KeysCommand, output: Output) -> Result<(), CliError> {
    match cmd {
        KeysCommand::Init(a) => {
            let r =
                keystore::init(&a.dir, a.threshold, a.keys, crate::now()).map_err(|e| match e {
                    KeystoreError::BadPolicy { .. } => CliError {
                        code: super::exit::USAGE,
                        message: e.to_string(),
                    },
                    other => CliError::input(other),
                })?;
            emit(output, &r);
            Ok(())
        }
    }
}
