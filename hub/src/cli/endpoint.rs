//! `flotilla endpoint create|set|show|list|delete`: endpoints, their
//! deployments (model versions), traffic weights, mirror, device selector and
//! latency objective.
//!
//! `set` replaces the endpoint (deployments, weights, mirror, selector) except
//! its latency objective, which it keeps unless `--p99-objective-ms` or
//! `--no-p99-objective` is given: a traffic shift should not silently turn off
//! the `latency-objective` alert.
//!
//! A deployed version cannot be archived or deleted; move the endpoint to
//! another version (or delete it) first.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::client::{segment, HubClient};
use super::credentials::{self, HubFlags};
use super::model::syntax;
use super::text::table;
use super::{emit, exit, CliError, Output, Report};
use crate::api::types::{DeploymentSpec, EndpointSpec, EndpointView, MirrorSpec, ReasonBody};

#[derive(Debug, Subcommand)]
pub(crate) enum EndpointCommand {
    /// Create an endpoint (fails if it exists; use `set` to change one).
    #[command(after_help = "\
Example:
  flotilla endpoint create fraud --selector site=lyon --deployment blue=fraud:3 --traffic blue=100 --reason \"first rollout\"")]
    Create(SetArgs),
    /// Change an endpoint's deployments, weights, mirror, selector or latency objective.
    #[command(after_help = "\
Example (canary 10% to version 4):
  flotilla endpoint set fraud --deployment blue=fraud:3 --deployment green=fraud:4 --traffic blue=90,green=10 --reason \"canary v4\"")]
    Set(SetArgs),
    /// Show one endpoint.
    Show {
        /// Endpoint name.
        name: String,
    },
    /// List endpoints.
    List,
    /// Delete an endpoint; its versions become deletable again.
    Delete {
        /// Endpoint name.
        name: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct SetArgs {
    /// Endpoint name: the model name applications use in scoring URLs.
    #[arg(value_parser = syntax::model_name)]
    name: String,
    /// A deployment, NAME=MODEL:VERSION; repeat for more.
    #[arg(long = "deployment", value_parser = parse_deployment, required = true)]
    deployments: Vec<DeploymentSpec>,
    /// Traffic weights in percent, NAME=W[,NAME=W...]; must sum to 100.
    #[arg(long, value_parser = parse_traffic)]
    traffic: BTreeMap<String, u32>,
    /// Copy a share of requests to a deployment, NAME=PERCENT.
    #[arg(long, value_parser = parse_mirror)]
    mirror: Option<MirrorSpec>,
    /// Devices whose labels include KEY=VALUE run the endpoint; repeat for more.
    #[arg(long = "selector", value_parser = syntax::tag)]
    selector: Vec<(String, String)>,
    /// Latency objective: each deployment's p99 should stay at or under MS
    /// milliseconds (the `latency-objective` alert rule judges it). `set`
    /// keeps the current objective when this flag is absent.
    #[arg(long = "p99-objective-ms", value_name = "MS", value_parser = parse_objective)]
    p99_objective_ms: Option<f64>,
    /// Remove the latency objective (for `set`).
    #[arg(long = "no-p99-objective", conflicts_with = "p99_objective_ms")]
    no_p99_objective: bool,
    /// Why (recorded in the audit log).
    #[arg(long)]
    reason: String,
}

fn parse_objective(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|ms| ms.is_finite() && *ms > 0.0)
        .ok_or_else(|| format!("{s:?}: the objective must be a number of milliseconds above 0"))
}

fn parse_deployment(s: &str) -> Result<DeploymentSpec, String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} must look like NAME=MODEL:VERSION"))?;
    let (model, version) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} must look like NAME=MODEL:VERSION"))?;
    let version: u64 = version
        .parse()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?}: version must be a positive integer"))?;
    syntax::model_name(name)?;
    syntax::model_name(model)?;
    Ok(DeploymentSpec {
        name: name.into(),
        model: model.into(),
        version,
    })
}

fn parse_traffic(s: &str) -> Result<BTreeMap<String, u32>, String> {
    s.split(',')
        .map(|part| {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} must look like NAME=PERCENT"))?;
            let w: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: weight must be a whole number of percent"))?;
            Ok((k.trim().to_string(), w))
        })
        .collect()
}

fn parse_mirror(s: &str) -> Result<MirrorSpec, String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} must look like NAME=PERCENT"))?;
    let percent: u32 = v
        .parse()
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| format!("{s:?}: percent must be 0-100"))?;
    Ok(MirrorSpec {
        deployment: k.into(),
        percent,
    })
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct One(EndpointView);

impl Report for One {
    fn text(&self) -> String {
        let e = &self.0;
        let mut s = format!(
            "endpoint {} (revision {}, by {} at {})\n",
            e.name, e.revision, e.updated_by, e.updated_at
        );
        let sel: Vec<String> = e.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s += &format!(
            "  selector: {}\n",
            if sel.is_empty() {
                "all devices".into()
            } else {
                sel.join(", ")
            }
        );
        for d in &e.deployments {
            s += &format!(
                "  {} = {}:{}  {}%\n",
                d.name,
                d.model,
                d.version,
                e.traffic.get(&d.name).copied().unwrap_or(0)
            );
        }
        if let Some(m) = &e.mirror {
            s += &format!(
                "  mirror: {}% of requests copied to {}\n",
                m.percent, m.deployment
            );
        }
        if let Some(ms) = e.objective_p99_ms {
            s += &format!("  p99 objective: {ms} ms\n");
        }
        s.trim_end().to_string()
    }
}

#[derive(Debug, Serialize)]
#[serde(transparent)]
struct Many(Vec<EndpointView>);

impl Report for Many {
    fn text(&self) -> String {
        if self.0.is_empty() {
            return "no endpoints".into();
        }
        table(
            &["NAME", "REVISION", "DEPLOYMENTS", "SELECTOR"],
            self.0
                .iter()
                .map(|e| {
                    let deps: Vec<String> = e
                        .deployments
                        .iter()
                        .map(|d| {
                            format!(
                                "{}={}:{}@{}%",
                                d.name,
                                d.model,
                                d.version,
                                e.traffic.get(&d.name).copied().unwrap_or(0)
                            )
                        })
                        .collect();
                    let sel: Vec<String> =
                        e.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    vec![
                        e.name.clone(),
                        e.revision.to_string(),
                        deps.join(" "),
                        sel.join(","),
                    ]
                })
                .collect(),
        )
    }
}

#[derive(Debug, Serialize)]
struct Deleted {
    name: String,
    deleted: bool,
}

impl Report for Deleted {
    fn text(&self) -> String {
        format!("deleted endpoint {}", self.name)
    }
}

pub(crate) fn run(cmd: EndpointCommand, output: Output, flags: &HubFlags) -> Result<(), CliError> {
    let client = HubClient::new(credentials::connection(flags)?);
    let err = |e| client.cli_error(e);
    let path = |name: &str| format!("/api/v1/endpoints/{}", segment(name));
    match cmd {
        EndpointCommand::Create(a) => {
            if client.get::<EndpointView>(&path(&a.name), &[]).is_ok() {
                return Err(CliError {
                    code: exit::CONFLICT,
                    message: format!(
                        "endpoint {} already exists; change it with `flotilla endpoint set`",
                        a.name
                    ),
                });
            }
            put(&client, a, None, output)?;
        }
        EndpointCommand::Set(a) => {
            let current: EndpointView = client.get(&path(&a.name), &[]).map_err(err)?;
            put(&client, a, current.objective_p99_ms, output)?;
        }
        EndpointCommand::Show { name } => {
            let e: EndpointView = client.get(&path(&name), &[]).map_err(err)?;
            emit(output, &One(e));
        }
        EndpointCommand::List => {
            let es: Vec<EndpointView> = client.get("/api/v1/endpoints", &[]).map_err(err)?;
            emit(output, &Many(es));
        }
        EndpointCommand::Delete { name, reason } => {
            client
                .delete(&path(&name), Some(&ReasonBody { reason }))
                .map_err(err)?;
            emit(
                output,
                &Deleted {
                    name,
                    deleted: true,
                },
            );
        }
    }
    Ok(())
}

/// Sends the spec; `current_objective` is the endpoint's objective now, kept
/// unless the flags set or clear it.
fn put(
    client: &HubClient,
    a: SetArgs,
    current_objective: Option<f64>,
    output: Output,
) -> Result<(), CliError> {
    let objective_p99_ms = match (a.no_p99_objective, a.p99_objective_ms) {
        (true, _) => None,
        (false, Some(ms)) => Some(ms),
        (false, None) => current_objective,
    };
    let spec = EndpointSpec {
        selector: a.selector.into_iter().collect(),
        deployments: a.deployments,
        traffic: a.traffic,
        mirror: a.mirror,
        objective_p99_ms,
        reason: a.reason,
    };
    let e: EndpointView = client
        .send(
            "PUT",
            &format!("/api/v1/endpoints/{}", segment(&a.name)),
            &spec,
        )
        .map_err(|e| client.cli_error(e))?;
    emit(output, &One(e));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_traffic_and_mirror_arguments_parse() {
        assert_eq!(
            parse_deployment("blue=fraud:3").unwrap(),
            DeploymentSpec {
                name: "blue".into(),
                model: "fraud".into(),
                version: 3
            }
        );
        assert!(parse_deployment("blue=fraud").is_err());
        assert!(parse_deployment("blue=fraud:0").is_err());
        assert!(parse_deployment("fraud:3").is_err());
        assert_eq!(
            parse_traffic("blue=90,green=10").unwrap(),
            [("blue".to_string(), 90), ("green".to_string(), 10)].into()
        );
        assert!(parse_traffic("blue=ninety").is_err());
        assert_eq!(
            parse_mirror("green=5").unwrap(),
            MirrorSpec {
                deployment: "green".into(),
                percent: 5
            }
        );
        assert!(parse_mirror("green=500").is_err());
        assert_eq!(parse_objective("50").unwrap(), 50.0);
        assert_eq!(parse_objective("12.5").unwrap(), 12.5);
        for bad in ["0", "-3", "NaN", "inf", "fast"] {
            assert!(parse_objective(bad).is_err(), "{bad}");
        }
    }
}
