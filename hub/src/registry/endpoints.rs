//! Endpoints: named sets of deployments (model versions) with traffic weights,
//! an optional mirror, and a device selector; and the per-device desired state
//! derived from them.
//!
//! Validation of the spec (names, weights, mirror) happens here; the store checks,
//! inside its transaction, that each named version exists and is active, and moves
//! the `referenced_by` marks that make the registry refuse to delete or archive a
//! deployed version.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_protocol::director::{DeploymentAssignment, EndpointAssignment, MirrorAssignment};
use flotilla_protocol::manifest::target_path;
use flotilla_protocol::tuf::Targets;

use super::{filter, Registry, RegistryError};
use crate::api::types::{EndpointSpec, EndpointView};
use crate::audit::AuditDraft;

/// Most deployments per endpoint.
pub const MAX_DEPLOYMENTS: usize = 16;

/// Checks an endpoint spec's shape.
pub fn validate(name: &str, spec: &EndpointSpec) -> Result<(), String> {
    filter::check_model_name(name).map_err(|_| {
        format!("endpoint name {name:?} must be 1-128 characters of A-Z a-z 0-9 - _ .")
    })?;
    filter::check_tags(&spec.selector).map_err(|e| format!("selector: {e}"))?;
    if spec.deployments.is_empty() || spec.deployments.len() > MAX_DEPLOYMENTS {
        return Err(format!(
            "an endpoint needs 1 to {MAX_DEPLOYMENTS} deployments"
        ));
    }
    let mut names = BTreeSet::new();
    for d in &spec.deployments {
        filter::check_model_name(&d.name).map_err(|_| {
            format!(
                "deployment name {:?} must be 1-128 characters of A-Z a-z 0-9 - _ .",
                d.name
            )
        })?;
        filter::check_model_name(&d.model)?;
        if !names.insert(d.name.as_str()) {
            return Err(format!("deployment {} is listed twice", d.name));
        }
    }
    for (dep, w) in &spec.traffic {
        if !names.contains(dep.as_str()) {
            return Err(format!(
                "traffic names {dep}, which is not one of the deployments"
            ));
        }
        if *w > 100 {
            return Err(format!(
                "traffic weight of {dep} is {w}; weights are percentages"
            ));
        }
    }
    let sum: u32 = spec.traffic.values().sum();
    if sum != 100 {
        return Err(format!("traffic weights sum to {sum}, not 100"));
    }
    if let Some(m) = &spec.mirror {
        if !names.contains(m.deployment.as_str()) || m.percent > 100 {
            return Err(format!("mirror to {} at {}%: the deployment must be one of the endpoint's and the share at most 100", m.deployment, m.percent));
        }
    }
    if let Some(ms) = spec.objective_p99_ms {
        if !(ms.is_finite() && ms > 0.0) {
            return Err(format!(
                "objective_p99_ms {ms} must be a finite number of milliseconds above 0"
            ));
        }
    }
    Ok(())
}

/// What a device with `labels` must run: every endpoint whose selector its
/// labels include, with each deployment bound to its signed target. Deployments
/// whose target is not (or no longer) signed are an error, never skipped.
pub fn desired_state(
    endpoints: &[EndpointView],
    labels: &BTreeMap<String, String>,
    targets: &Targets,
) -> Result<Vec<EndpointAssignment>, String> {
    let mut out = Vec::new();
    for ep in endpoints {
        if !ep.selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        let mut deployments = Vec::new();
        for d in &ep.deployments {
            let target = target_path(&d.model, d.version);
            let signed = targets
                .targets
                .get(&target)
                .ok_or_else(|| format!("endpoint {}: {target} is not a signed target", ep.name))?;
            deployments.push(DeploymentAssignment {
                name: d.name.clone(),
                target,
                length: signed.length,
                sha256: signed.hashes.get("sha256").cloned().unwrap_or_default(),
                weight: ep.traffic.get(&d.name).copied().unwrap_or(0),
            });
        }
        out.push(EndpointAssignment {
            name: ep.name.clone(),
            deployments,
            mirror: ep.mirror.as_ref().map(|m| MirrorAssignment {
                deployment: m.deployment.clone(),
                percent: m.percent,
            }),
        });
    }
    Ok(out)
}

impl Registry {
    /// Creates or replaces an endpoint.
    pub fn put_endpoint(
        &self,
        actor: &str,
        name: &str,
        spec: EndpointSpec,
    ) -> Result<EndpointView, RegistryError> {
        validate(name, &spec).map_err(RegistryError::BadRequest)?;
        let now = super::now_str();
        let view = EndpointView {
            name: name.to_string(),
            selector: spec.selector,
            deployments: spec.deployments,
            traffic: spec.traffic,
            mirror: spec.mirror,
            objective_p99_ms: spec.objective_p99_ms,
            revision: 0,
            updated_at: now.clone(),
            updated_by: actor.to_string(),
        };
        let (view, _) = self.store.put_endpoint(
            view,
            AuditDraft::new(
                actor,
                "endpoint.set",
                format!("endpoint/{name}"),
                &spec.reason,
            ),
            &now,
        )?;
        self.emit(
            "endpoint.updated",
            &format!("endpoint/{name}"),
            actor,
            serde_json::json!({
                "revision": view.revision,
                "traffic": view.traffic,
                "objective_p99_ms": view.objective_p99_ms,
            }),
        );
        Ok(view)
    }

    /// Deletes an endpoint.
    pub fn delete_endpoint(
        &self,
        actor: &str,
        name: &str,
        reason: &str,
    ) -> Result<(), RegistryError> {
        self.store.delete_endpoint(
            name,
            AuditDraft::new(actor, "endpoint.delete", format!("endpoint/{name}"), reason),
            &super::now_str(),
        )?;
        self.emit(
            "endpoint.deleted",
            &format!("endpoint/{name}"),
            actor,
            serde_json::Value::Null,
        );
        Ok(())
    }

    /// One endpoint.
    pub fn endpoint(&self, name: &str) -> Result<EndpointView, RegistryError> {
        self.store
            .endpoint(name)?
            .ok_or_else(|| RegistryError::NotFound(format!("endpoint {name} does not exist")))
    }

    /// All endpoints.
    pub fn endpoints(&self) -> Result<Vec<EndpointView>, RegistryError> {
        Ok(self.store.endpoints()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{DeploymentSpec, MirrorSpec};
    use flotilla_protocol::tuf::TargetFile;

    fn spec(traffic: &[(&str, u32)]) -> EndpointSpec {
        EndpointSpec {
            selector: [("site".to_string(), "lyon".to_string())].into(),
            deployments: vec![
                DeploymentSpec {
                    name: "blue".into(),
                    model: "fraud".into(),
                    version: 3,
                },
                DeploymentSpec {
                    name: "green".into(),
                    model: "fraud".into(),
                    version: 4,
                },
            ],
            traffic: traffic.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            mirror: None,
            objective_p99_ms: None,
            reason: String::new(),
        }
    }

    #[test]
    fn weights_must_sum_to_100_over_known_deployments() {
        assert!(validate("fraud", &spec(&[("blue", 90), ("green", 10)])).is_ok());
        assert!(
            validate("fraud", &spec(&[("blue", 100)])).is_ok(),
            "green may carry 0 (e.g. as a mirror)"
        );
        assert!(validate("fraud", &spec(&[("blue", 90)]))
            .unwrap_err()
            .contains("sum to 90"));
        assert!(validate("fraud", &spec(&[("blue", 90), ("red", 10)]))
            .unwrap_err()
            .contains("red"));
        let mut s = spec(&[("blue", 100)]);
        s.mirror = Some(MirrorSpec {
            deployment: "green".into(),
            percent: 5,
        });
        assert!(validate("fraud", &s).is_ok());
        s.mirror = Some(MirrorSpec {
            deployment: "purple".into(),
            percent: 5,
        });
        assert!(validate("fraud", &s).is_err());
        let mut s = spec(&[("blue", 100)]);
        s.deployments[1].name = "blue".into();
        assert!(validate("fraud", &s).unwrap_err().contains("twice"));
    }

    #[test]
    fn a_latency_objective_must_be_a_positive_finite_number_of_milliseconds() {
        let mut s = spec(&[("blue", 100)]);
        s.objective_p99_ms = Some(50.0);
        assert!(validate("fraud", &s).is_ok());
        for bad in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            s.objective_p99_ms = Some(bad);
            let e = validate("fraud", &s).unwrap_err();
            assert!(e.contains("objective_p99_ms"), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn an_endpoint_stored_without_an_objective_still_reads() {
        let old = serde_json::json!({
            "name": "fraud", "selector": {}, "deployments": [], "traffic": {},
            "mirror": null, "revision": 1, "updated_at": "", "updated_by": "",
        });
        let view: EndpointView = serde_json::from_value(old).unwrap();
        assert_eq!(view.objective_p99_ms, None);
        let back = serde_json::to_value(&view).unwrap();
        assert!(back.get("objective_p99_ms").is_none(), "{back}");
        let with: EndpointSpec = serde_json::from_value(serde_json::json!({
            "deployments": [], "traffic": {}, "objective_p99_ms": 40.5,
        }))
        .unwrap();
        assert_eq!(with.objective_p99_ms, Some(40.5));
    }

    #[test]
    fn desired_state_follows_selectors_and_signed_targets() {
        let s = spec(&[("blue", 90), ("green", 10)]);
        let ep = EndpointView {
            name: "fraud".into(),
            selector: s.selector.clone(),
            deployments: s.deployments.clone(),
            traffic: s.traffic.clone(),
            mirror: None,
            objective_p99_ms: None,
            revision: 1,
            updated_at: String::new(),
            updated_by: String::new(),
        };
        let mut targets = Targets::new(1, flotilla_protocol::time::UtcTime(0));
        for v in [3, 4] {
            targets.targets.insert(
                target_path("fraud", v),
                TargetFile::describing(&[v as u8], None),
            );
        }
        let lyon = [
            ("site".to_string(), "lyon".to_string()),
            ("gpu".to_string(), "yes".to_string()),
        ]
        .into();
        let got = desired_state(std::slice::from_ref(&ep), &lyon, &targets).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0]
                .deployments
                .iter()
                .map(|d| d.weight)
                .collect::<Vec<_>>(),
            vec![90, 10]
        );
        assert_eq!(got[0].deployments[1].length, 1);
        let paris = [("site".to_string(), "paris".to_string())].into();
        assert!(desired_state(std::slice::from_ref(&ep), &paris, &targets)
            .unwrap()
            .is_empty());
        targets.targets.remove(&target_path("fraud", 4));
        assert!(
            desired_state(&[ep], &lyon, &targets).is_err(),
            "an unsigned target is an error, not skipped"
        );
    }
}
