//! The invariants and limits a decoded [`TelemetryWindow`] must respect.

use std::collections::BTreeSet;

use super::TelemetryWindow;
use crate::limits::Limits;
use crate::telemetry::{check_count, check_name, invalid, topics, TelemetryError};
use crate::wire::WireError;

impl TelemetryWindow {
    /// Checks every invariant and limit.
    pub fn validate(&self, limits: &Limits) -> Result<(), TelemetryError> {
        topics::check_device(&self.device).map_err(|e| invalid("device id", e.to_string()))?;
        if self.first_seq == 0 || self.first_seq > self.last_seq {
            return Err(invalid(
                "sequence range",
                format!(
                    "{}..={} is empty or starts at 0",
                    self.first_seq, self.last_seq
                ),
            ));
        }
        let width = self.last_seq - self.first_seq;
        if self.span_count == 0 || self.span_count - 1 > width {
            return Err(invalid(
                "span count",
                format!(
                    "{} windows cannot cover {}..={}",
                    self.span_count, self.first_seq, self.last_seq
                ),
            ));
        }
        if self.start > self.end {
            return Err(invalid("window time", "ends before it starts"));
        }
        self.validate_endpoints(limits)?;
        self.validate_system(limits)?;
        self.validate_agent(limits)?;
        self.validate_drift(limits)
    }

    fn validate_endpoints(&self, limits: &Limits) -> Result<(), TelemetryError> {
        check_count(
            "endpoint statistics",
            self.endpoints.len(),
            limits.max_window_series,
        )?;
        let mut keys = BTreeSet::new();
        for e in &self.endpoints {
            check_name("endpoint name", &e.endpoint, limits.max_name_len)?;
            check_name("deployment name", &e.deployment, limits.max_name_len)?;
            if !keys.insert(e.key()) {
                return Err(invalid(
                    "endpoint statistics",
                    format!("{}/{} listed twice", e.endpoint, e.deployment),
                ));
            }
            check_count("error kinds", e.errors.len(), limits.max_window_map_entries)?;
            for kind in e.errors.keys() {
                check_name("error kind", kind, limits.max_name_len)?;
            }
        }
        Ok(())
    }

    fn validate_system(&self, limits: &Limits) -> Result<(), TelemetryError> {
        let s = &self.system;
        check_gauge("cpu percent", s.cpu_percent)?;
        check_gauge("load average", s.load1)?;
        check_count(
            "temperature sensors",
            s.temperatures_c.len(),
            limits.max_window_map_entries,
        )?;
        for (sensor, t) in &s.temperatures_c {
            check_name("temperature sensor", sensor, limits.max_name_len)?;
            check_finite("temperature", *t)?;
        }
        check_count(
            "accelerators",
            s.accelerators.len(),
            limits.max_accelerators,
        )?;
        for a in &s.accelerators {
            check_count("accelerator name", a.name.len(), limits.max_name_len)?;
            if let Some(u) = a.utilization_percent {
                check_gauge("accelerator utilization", u)?;
            }
            if let Some(t) = a.temperature_c {
                check_finite("accelerator temperature", t)?;
            }
        }
        Ok(())
    }

    fn validate_agent(&self, limits: &Limits) -> Result<(), TelemetryError> {
        let a = &self.agent;
        check_count("agent version", a.version.len(), limits.max_name_len)?;
        check_count("sync state", a.sync_state.len(), limits.max_name_len)?;
        check_count(
            "activation states",
            a.activations.len(),
            limits.max_deployments,
        )?;
        for s in &a.activations {
            s.validate(limits).map_err(|e| match e {
                WireError::LimitExceeded {
                    what,
                    actual,
                    limit,
                } => TelemetryError::LimitExceeded {
                    what,
                    actual,
                    limit,
                },
                other => invalid("activation state", other.to_string()),
            })?;
        }
        Ok(())
    }

    fn validate_drift(&self, limits: &Limits) -> Result<(), TelemetryError> {
        check_count(
            "drift observations",
            self.drift.len(),
            limits.max_window_series,
        )?;
        let mut keys = BTreeSet::new();
        for d in &self.drift {
            check_name("endpoint name", &d.endpoint, limits.max_name_len)?;
            check_name("deployment name", &d.deployment, limits.max_name_len)?;
            check_name("target path", &d.target, limits.max_name_len)?;
            if !keys.insert(d.key()) {
                return Err(invalid(
                    "drift observations",
                    format!("{}/{} {} listed twice", d.endpoint, d.deployment, d.target),
                ));
            }
            check_count(
                "drift features",
                d.inputs.len().saturating_add(d.outputs.len()),
                limits.max_drift_features,
            )?;
            for list in [&d.inputs, &d.outputs] {
                let mut names = BTreeSet::new();
                for f in list {
                    check_name("feature name", &f.name, limits.max_name_len)?;
                    if !names.insert(f.name.as_str()) {
                        return Err(invalid(
                            "drift features",
                            format!("{:?} listed twice", f.name),
                        ));
                    }
                    check_count(
                        "feature bins",
                        f.counts.bin_count(),
                        limits.max_feature_bins,
                    )?;
                }
            }
        }
        Ok(())
    }
}

fn check_finite(what: &'static str, x: f64) -> Result<(), TelemetryError> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(invalid(what, format!("{x} is not a finite number")))
    }
}

fn check_gauge(what: &'static str, x: f64) -> Result<(), TelemetryError> {
    check_finite(what, x)?;
    if x < 0.0 {
        return Err(invalid(what, format!("{x} is negative")));
    }
    Ok(())
}
