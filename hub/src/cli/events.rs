//! `flotilla events list|tail`: the hub's event log, and following it live
//! over the server-sent-event stream (`tail --follow`), reconnecting with
//! `Last-Event-ID` so that a dropped connection loses nothing.

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::client::HubClient;
use super::credentials::{self, HubFlags};
use super::text::table;
use super::{emit, CliError, Output, Report};
use crate::api::types::{EventRecord, Page};

#[derive(Debug, Subcommand)]
pub(crate) enum EventsCommand {
    /// Events after an id, oldest first.
    #[command(
        after_help = "Example:\n  flotilla events list --since 120 --type alert.fired,alert.resolved"
    )]
    List {
        /// Only events after this id.
        #[arg(long, default_value_t = 0)]
        since: u64,
        #[command(flatten)]
        filter: Filter,
        /// Events to show (the hub caps it at 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The latest events; with --follow, then every new one as it happens.
    /// With --output json and --follow, one JSON object per line.
    #[command(after_help = "\
Examples:
  flotilla events tail
  flotilla events tail --follow --type drift.detected,alert.fired
  flotilla events tail -f --output json | jq .data")]
    Tail {
        /// How many past events to show first.
        #[arg(long, short = 'n', default_value_t = 10)]
        lines: u32,
        /// Keep printing new events until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        filter: Filter,
    },
}

#[derive(Debug, Args)]
pub(crate) struct Filter {
    /// Only these event types, comma-separated (model.registered, drift.detected …).
    #[arg(long = "type", value_delimiter = ',', value_name = "TYPE")]
    types: Vec<String>,
}

impl Filter {
    fn query(&self) -> Option<(&'static str, String)> {
        (!self.types.is_empty()).then(|| ("type", self.types.join(",")))
    }
}

fn row(e: &EventRecord) -> Vec<String> {
    vec![
        e.id.to_string(),
        e.time.clone(),
        e.kind.clone(),
        e.object.clone(),
        e.actor.clone(),
        if e.data.is_null() {
            String::new()
        } else {
            e.data.to_string()
        },
    ]
}

const HEADER: [&str; 6] = ["ID", "TIME", "TYPE", "OBJECT", "ACTOR", "DATA"];

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Events(Vec<EventRecord>);

impl Report for Events {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "no events".into();
        }
        table(&HEADER, self.0.iter().map(row).collect())
    }
}

fn print_live(output: Output, e: &EventRecord) {
    let line = match output {
        Output::Json => serde_json::to_string(e).unwrap_or_default(),
        Output::Text => row(e).join("  "),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Follows the stream from after `last` until interrupted.
fn follow(
    client: &HubClient,
    filter: &Filter,
    mut last: u64,
    output: Output,
) -> Result<(), CliError> {
    let mut failures = 0u32;
    loop {
        let mut req = client
            .request("GET", "/api/v1/events/stream")
            .set("Accept", "text/event-stream")
            .set("Last-Event-ID", &last.to_string());
        if let Some((k, v)) = filter.query() {
            req = req.query(k, &v);
        }
        match client.answer(req.call()) {
            Ok(resp) => {
                failures = 0;
                let mut data = String::new();
                for line in BufReader::new(resp.into_reader()).lines() {
                    let Ok(line) = line else { break };
                    if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    } else if line.is_empty() && !data.is_empty() {
                        if let Ok(e) = serde_json::from_str::<EventRecord>(&data) {
                            last = last.max(e.id);
                            print_live(output, &e);
                        }
                        data.clear();
                    }
                }
            }
            Err(e) if !e.is_transient() => return Err(client.cli_error(e)),
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    eprintln!("event stream interrupted ({e}); reconnecting");
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub(crate) fn run(cmd: EventsCommand, output: Output, flags: &HubFlags) -> Result<(), CliError> {
    let client = HubClient::new(credentials::connection(flags)?);
    let err = |e| client.cli_error(e);
    match cmd {
        EventsCommand::List {
            since,
            filter,
            limit,
        } => {
            let mut q = vec![("since", since.to_string()), ("limit", limit.to_string())];
            q.extend(filter.query());
            let page: Page<EventRecord> = client.get("/api/v1/events", &q).map_err(err)?;
            emit(output, &Events(page.items));
        }
        EventsCommand::Tail {
            lines,
            follow: live,
            filter,
        } => {
            let mut q = vec![("tail", lines.to_string())];
            q.extend(filter.query());
            let page: Page<EventRecord> = if lines == 0 {
                Page {
                    items: Vec::new(),
                    next_cursor: None,
                }
            } else {
                client.get("/api/v1/events", &q).map_err(err)?
            };
            let last = page.items.last().map_or(0, |e| e.id);
            if !live {
                emit(output, &Events(page.items));
                return Ok(());
            }
            for e in &page.items {
                print_live(output, e);
            }
            // Nothing shown yet: follow from the end of the log, not its start.
            let start = if page.items.is_empty() {
                let all: Page<EventRecord> = client
                    .get("/api/v1/events", &[("tail", "1".to_string())])
                    .map_err(err)?;
                all.items.last().map_or(0, |e| e.id)
            } else {
                last
            };
            follow(&client, &filter, start, output)?;
        }
    }
    Ok(())
}
