//! `flotilla webhook add|list|remove|deliveries`: URLs that receive the hub's
//! events as signed JSON POSTs.

use clap::Subcommand;
use serde::Serialize;

use super::client::{segment, HubClient};
use super::credentials::{self, HubFlags};
use super::text::table;
use super::{emit, CliError, Output, Report};
use crate::api::types::{CreateWebhook, DeliveryView, WebhookView};

#[derive(Debug, Subcommand)]
pub(crate) enum WebhookCommand {
    /// Register a URL for events. Each POST carries
    /// `X-Flotilla-Signature: sha256=HEX` (HMAC-SHA256 of the body with the
    /// secret) and `X-Flotilla-Event-Id`; failures are retried with backoff.
    #[command(after_help = "\
Examples:
  flotilla webhook add https://ci.example/hooks/flotilla --events drift.detected,alert.fired --secret \"$SECRET\"
  flotilla webhook add http://127.0.0.1:9000/all        every event; the hub generates and prints a secret")]
    Add {
        /// Where to POST events.
        url: String,
        /// Event types to deliver, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// The HMAC secret (default: generated and printed once).
        #[arg(long, env = "FLOTILLA_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// List webhooks (secrets are never shown again).
    List,
    /// Remove a webhook; pending deliveries stop.
    Remove {
        /// Webhook id.
        id: String,
    },
    /// Show a webhook's latest delivery attempts.
    Deliveries {
        /// Webhook id.
        id: String,
        /// Attempts to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Created(WebhookView);

impl Report for Created {
    fn text(&self) -> String {
        let w = &self.0;
        let mut s = format!(
            "webhook {} -> {} ({})",
            w.id,
            w.url,
            if w.events.is_empty() {
                "all events".into()
            } else {
                w.events.join(", ")
            }
        );
        if let Some(secret) = &w.secret {
            s += &format!("\nsigning secret (shown once):\n  {secret}");
        }
        s
    }
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Hooks(Vec<WebhookView>);

impl Report for Hooks {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "no webhooks".into();
        }
        table(
            &["ID", "URL", "EVENTS", "CURSOR", "CREATED BY"],
            self.0
                .iter()
                .map(|w| {
                    vec![
                        w.id.clone(),
                        w.url.clone(),
                        if w.events.is_empty() {
                            "all".into()
                        } else {
                            w.events.join(",")
                        },
                        w.cursor.to_string(),
                        w.created_by.clone(),
                    ]
                })
                .collect(),
        )
    }
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Deliveries(Vec<DeliveryView>);

impl Report for Deliveries {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "no deliveries".into();
        }
        table(
            &["TIME", "EVENT", "TYPE", "ATTEMPT", "RESULT", "OUTCOME"],
            self.0
                .iter()
                .map(|d| {
                    vec![
                        d.time.clone(),
                        d.event_id.to_string(),
                        d.event_type.clone(),
                        d.attempt.to_string(),
                        match (&d.status, &d.error) {
                            (Some(s), _) => format!("HTTP {s}"),
                            (None, Some(e)) => e.clone(),
                            (None, None) => "-".into(),
                        },
                        d.outcome.clone(),
                    ]
                })
                .collect(),
        )
    }
}

#[derive(Debug, Serialize)]
struct Removed {
    removed: String,
}

impl Report for Removed {
    fn text(&self) -> String {
        format!("removed webhook {}", self.removed)
    }
}

pub(crate) fn run(cmd: WebhookCommand, output: Output, flags: &HubFlags) -> Result<(), CliError> {
    let client = HubClient::new(credentials::connection(flags)?);
    let err = |e| client.cli_error(e);
    match cmd {
        WebhookCommand::Add {
            url,
            events,
            secret,
        } => {
            let w: WebhookView = client
                .send(
                    "POST",
                    "/api/v1/webhooks",
                    &CreateWebhook {
                        url,
                        events,
                        secret,
                    },
                )
                .map_err(err)?;
            emit(output, &Created(w));
        }
        WebhookCommand::List => {
            let ws: Vec<WebhookView> = client.get("/api/v1/webhooks", &[]).map_err(err)?;
            emit(output, &Hooks(ws));
        }
        WebhookCommand::Remove { id } => {
            client
                .delete(&format!("/api/v1/webhooks/{}", segment(&id)), None::<&()>)
                .map_err(err)?;
            emit(output, &Removed { removed: id });
        }
        WebhookCommand::Deliveries { id, limit } => {
            let ds: Vec<DeliveryView> = client
                .get(
                    &format!("/api/v1/webhooks/{}/deliveries", segment(&id)),
                    &[("limit", limit.to_string())],
                )
                .map_err(err)?;
            emit(output, &Deliveries(ds));
        }
    }
    Ok(())
}
