//! `flotilla audit list|verify`: read and check the hub's hash-chained audit
//! log. The hub does the checking; this prints its verdict and turns a broken
//! chain into exit code 1.

use clap::{Args, Subcommand};

use super::client::HubClient;
use super::credentials::{self, HubFlags};
use super::text::table;
use super::{emit, exit, CliError, Output, Report};
use crate::api::types::{AuditEntry, AuditVerification, Page};

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// List audit entries: who did what, to what, why, in order.
    #[command(after_help = "\
Examples:
  flotilla audit list                    the first page from the start
  flotilla audit list --since 120 --all  everything after entry 120
  flotilla audit list --all --output json > audit.json")]
    List(ListArgs),
    /// Check the whole chain: every entry's hash and its link to the one
    /// before. Exit 1, naming the first bad sequence number, if any entry was
    /// edited, removed or reordered.
    #[command(after_help = "\
Example:
  flotilla audit verify && echo chain intact")]
    Verify,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only entries after this sequence number.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    since: u64,
    /// Entries per page (the hub caps it).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
    /// Follow every page to the end of the log.
    #[arg(long)]
    all: bool,
}

/// Most pages `--all` follows.
const MAX_PAGES: usize = 100_000;

impl Report for Page<AuditEntry> {
    fn text(&self) -> String {
        if self.items.is_empty() {
            return "no audit entries".into();
        }
        let mut s = table(
            &["SEQ", "TIME", "ACTOR", "ACTION", "OBJECT", "REASON"],
            self.items
                .iter()
                .map(|e| {
                    vec![
                        e.seq.to_string(),
                        e.time.clone(),
                        e.actor.clone(),
                        e.action.clone(),
                        e.object.clone(),
                        e.reason.clone(),
                    ]
                })
                .collect(),
        );
        if let (Some(_), Some(last)) = (&self.next_cursor, self.items.last()) {
            s += &format!("\n(more: --since {}, or --all)", last.seq);
        }
        s
    }
}

impl Report for AuditVerification {
    fn text(&self) -> String {
        format!("audit chain intact: {} entries verified", self.entries)
    }
}

fn list(client: &HubClient, a: ListArgs, output: Output) -> Result<(), CliError> {
    let mut since = a.since;
    let mut items = Vec::new();
    let mut next_cursor = None;
    for _ in 0..MAX_PAGES {
        let mut q = vec![("since", since.to_string())];
        if let Some(l) = a.limit {
            q.push(("limit", l.to_string()));
        }
        let page: Page<AuditEntry> = client
            .get("/api/v1/audit", &q)
            .map_err(|e| client.cli_error(e))?;
        // Pages continue from the last sequence number seen, so --all works
        // whatever the cursor holds; a page that does not advance ends it.
        let last = page.items.last().map(|e| e.seq);
        items.extend(page.items);
        next_cursor = page.next_cursor;
        match (a.all, &next_cursor, last) {
            (true, Some(_), Some(seq)) if seq > since => since = seq,
            _ => break,
        }
    }
    if a.all {
        next_cursor = None;
    }
    emit(output, &Page { items, next_cursor });
    Ok(())
}

fn verify(client: &HubClient, output: Output) -> Result<(), CliError> {
    let v: AuditVerification = client
        .get("/api/v1/audit/verify", &[])
        .map_err(|e| client.cli_error(e))?;
    if v.ok {
        emit(output, &v);
        return Ok(());
    }
    let at = v.first_bad_seq.map_or("an unknown entry".to_string(), |s| {
        format!("sequence number {s}")
    });
    Err(CliError {
        code: exit::UNTRUSTED,
        message: format!(
            "audit chain broken at {at}: {} ({} entries checked); entries from there on \
             cannot be trusted",
            v.reason.as_deref().unwrap_or("no reason given"),
            v.entries
        ),
    })
}

pub(crate) fn run(cmd: AuditCommand, output: Output, flags: &HubFlags) -> Result<(), CliError> {
    let client = HubClient::new(credentials::connection(flags)?);
    match cmd {
        AuditCommand::List(a) => list(&client, a, output),
        AuditCommand::Verify => verify(&client, output),
    }
}
