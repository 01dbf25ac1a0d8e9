//! `flotilla alerts list|rules`: alerts that fired and have not resolved,
//! and the rules in effect.

use clap::Subcommand;
use serde::Serialize;

use super::client::HubClient;
use super::credentials::{self, HubFlags};
use super::text::table;
use super::{emit, CliError, Output, Report};
use crate::api::types::{ActiveAlert, AlertRuleView};

#[derive(Debug, Subcommand)]
pub(crate) enum AlertsCommand {
    /// Alerts that fired and have not resolved.
    #[command(after_help = "Example:\n  flotilla alerts list --output json")]
    List,
    /// The rules in effect: built-in defaults, `[[alerts]]` in the hub's
    /// config, and rules added through the API.
    Rules,
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Active(Vec<ActiveAlert>);

impl Report for Active {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "no active alerts".into();
        }
        table(
            &["RULE", "SUBJECT", "VALUE", "THRESHOLD", "SINCE"],
            self.0
                .iter()
                .map(|a| {
                    vec![
                        a.rule.clone(),
                        a.subject.clone(),
                        format!("{:.3}", a.value),
                        format!("{}", a.threshold),
                        a.since.clone(),
                    ]
                })
                .collect(),
        )
    }
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Rules(Vec<AlertRuleView>);

impl Report for Rules {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "no alert rules".into();
        }
        table(
            &["NAME", "METRIC", "CONDITION", "FOR", "SCOPE", "SOURCE"],
            self.0
                .iter()
                .map(|r| {
                    let rule = &r.rule;
                    vec![
                        rule.name.clone(),
                        serde_json::to_value(rule.metric)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        format!("{} {}", rule.condition.symbol(), rule.threshold),
                        format!(
                            "{} x {}",
                            rule.for_windows,
                            rule.min_samples().to_string() + " samples"
                        ),
                        serde_json::to_string(&rule.scope).unwrap_or_default(),
                        r.source.clone(),
                    ]
                })
                .collect(),
        )
    }
}

pub(crate) fn run(cmd: AlertsCommand, output: Output, flags: &HubFlags) -> Result<(), CliError> {
    let client = HubClient::new(credentials::connection(flags)?);
    let err = |e| client.cli_error(e);
    match cmd {
        AlertsCommand::List => {
            let a: Vec<ActiveAlert> = client.get("/api/v1/alerts", &[]).map_err(err)?;
            emit(output, &Active(a));
        }
        AlertsCommand::Rules => {
            let r: Vec<AlertRuleView> = client.get("/api/v1/alerts/rules", &[]).map_err(err)?;
            emit(output, &Rules(r));
        }
    }
    Ok(())
}
