//! Alert rules over the fleet's telemetry: validation, the built-in defaults,
//! and the evaluator that fires and resolves alerts.
//!
//! A rule names a metric (`psi`, `error_rate`, `p99_ms`, `p99_over_objective`,
//! `device_offline_secs`), a scope (endpoint, deployment, device, labels), a
//! condition and threshold, and how many consecutive evaluations must breach
//! before it fires. Rules come from three places: the built-in defaults
//! ([`default_rules`], unless `[telemetry] default_alerts = false`), the
//! config's `[[alerts]]` (which replace a default of the same name) and the API
//! (stored in the telemetry database).
//!
//! This module stores nothing and sends nothing: [`eval::Evaluator`] is a
//! sans-IO state machine that takes windows and presence with the time and
//! answers [`eval::AlertAction`]s; `crate::telemetry` persists them and emits
//! the events (`drift.detected`, `alert.fired`, `alert.resolved`). The
//! endpoints' latency objectives reach it the same way, as an input
//! ([`eval::Evaluator::set_objectives`]).
//!
//! # Layout
//! - [`eval`]: the evaluator: per rule and subject, an accumulator and a streak.

pub mod eval;

use crate::api::types::{AlertCondition, AlertMetric, AlertRule, AlertScope};

/// Rows one PSI evaluation needs by default: PSI over fewer rows is noise
/// (see `flotilla_protocol::telemetry::drift`).
pub const DEFAULT_PSI_MIN_ROWS: u64 = 300;
/// Requests one error-rate or latency evaluation needs by default.
pub const DEFAULT_MIN_REQUESTS: u64 = 100;
/// Most rules (defaults, config and API together).
pub const MAX_RULES: usize = 256;

/// The built-in rules: PSI > 0.2 for 3 evaluations (`drift`), error rate
/// above 5% (`error-rate`), p99 latency above the endpoint's objective for 3
/// evaluations (`latency-objective`; endpoints without an objective are not
/// judged), a device offline for more than 5 minutes (`device-offline`).
pub fn default_rules() -> Vec<AlertRule> {
    vec![
        AlertRule {
            name: "drift".into(),
            metric: AlertMetric::Psi,
            scope: AlertScope::default(),
            condition: AlertCondition::Above,
            threshold: 0.2,
            for_windows: 3,
            min_samples: None,
            per_device: false,
        },
        AlertRule {
            name: "error-rate".into(),
            metric: AlertMetric::ErrorRate,
            scope: AlertScope::default(),
            condition: AlertCondition::Above,
            threshold: 0.05,
            for_windows: 1,
            min_samples: None,
            per_device: false,
        },
        AlertRule {
            name: "latency-objective".into(),
            metric: AlertMetric::P99OverObjective,
            scope: AlertScope::default(),
            condition: AlertCondition::Above,
            threshold: 1.0,
            for_windows: 3,
            min_samples: None,
            per_device: false,
        },
        AlertRule {
            name: "device-offline".into(),
            metric: AlertMetric::DeviceOfflineSecs,
            scope: AlertScope::default(),
            condition: AlertCondition::Above,
            threshold: 300.0,
            for_windows: 1,
            min_samples: None,
            per_device: true,
        },
    ]
}

impl AlertRule {
    /// Checks the rule; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(format!(
                "name {:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        if !self.threshold.is_finite() {
            return Err("threshold must be a finite number".into());
        }
        if !(1..=1000).contains(&self.for_windows) {
            return Err(format!(
                "for_windows {} must be between 1 and 1000",
                self.for_windows
            ));
        }
        if let Some(n) = self.min_samples {
            if !(1..=1_000_000_000).contains(&n) {
                return Err(format!("min_samples {n} must be between 1 and 1000000000"));
            }
        }
        let s = &self.scope;
        for (what, v) in [
            ("scope.endpoint", &s.endpoint),
            ("scope.deployment", &s.deployment),
            ("scope.device", &s.device),
        ] {
            if let Some(v) = v {
                if v.is_empty() || v.len() > 256 {
                    return Err(format!("{what} must be 1 to 256 bytes"));
                }
            }
        }
        if s.labels.len() > 32 {
            return Err("scope.labels: at most 32 labels".into());
        }
        Ok(())
    }

    /// Samples one evaluation needs.
    pub fn min_samples(&self) -> u64 {
        self.min_samples.unwrap_or(match self.metric {
            AlertMetric::Psi => DEFAULT_PSI_MIN_ROWS,
            AlertMetric::ErrorRate | AlertMetric::P99Ms | AlertMetric::P99OverObjective => {
                DEFAULT_MIN_REQUESTS
            }
            AlertMetric::DeviceOfflineSecs => 1,
        })
    }
}

impl AlertScope {
    /// Whether telemetry of `device` (with `labels`) for `endpoint` and
    /// `deployment` (`None` for device-level metrics) is in scope.
    pub fn matches(
        &self,
        device: &str,
        labels: &std::collections::BTreeMap<String, String>,
        endpoint: Option<&str>,
        deployment: Option<&str>,
    ) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have.is_none_or(|h| h == w))
        };
        eq(&self.device, Some(device))
            && eq(&self.endpoint, endpoint)
            && eq(&self.deployment, deployment)
            && self
                .labels
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }
}

/// The effective rule set: defaults (if enabled) replaced by config rules of
/// the same name, then API rules. Each with its source.
pub fn effective_rules(
    defaults: bool,
    config: &[AlertRule],
    api: &[AlertRule],
) -> Vec<(AlertRule, &'static str)> {
    let mut out: Vec<(AlertRule, &'static str)> = Vec::new();
    if defaults {
        for d in default_rules() {
            if !config.iter().any(|c| c.name == d.name) {
                out.push((d, "default"));
            }
        }
    }
    out.extend(config.iter().cloned().map(|r| (r, "config")));
    out.extend(api.iter().cloned().map(|r| (r, "api")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_config_rules_replace_them_by_name() {
        for r in default_rules() {
            r.validate().unwrap();
        }
        let mut mine = default_rules()[0].clone();
        mine.threshold = 0.3;
        let rules = effective_rules(true, std::slice::from_ref(&mine), &[]);
        assert_eq!(rules.len(), 4);
        let latency = rules
            .iter()
            .find(|(r, _)| r.name == "latency-objective")
            .unwrap();
        assert_eq!(latency.0.metric, AlertMetric::P99OverObjective);
        assert_eq!((latency.0.threshold, latency.0.for_windows), (1.0, 3));
        assert_eq!(latency.0.min_samples(), DEFAULT_MIN_REQUESTS);
        let drift: Vec<_> = rules.iter().filter(|(r, _)| r.name == "drift").collect();
        assert_eq!(drift.len(), 1);
        assert_eq!((drift[0].0.threshold, drift[0].1), (0.3, "config"));
        assert!(effective_rules(false, &[], &[]).is_empty());
    }

    #[test]
    fn invalid_rules_name_the_field() {
        let mut r = default_rules()[0].clone();
        r.name = "a b".into();
        assert!(r.validate().unwrap_err().contains("name"));
        let mut r = default_rules()[0].clone();
        r.threshold = f64::NAN;
        assert!(r.validate().unwrap_err().contains("threshold"));
        let mut r = default_rules()[0].clone();
        r.for_windows = 0;
        assert!(r.validate().unwrap_err().contains("for_windows"));
    }

    #[test]
    fn configured_rules_can_use_the_latency_objective_metric() {
        let r: AlertRule = serde_json::from_value(serde_json::json!({
            "name": "fraud-latency",
            "metric": "p99_over_objective",
            "threshold": 0.8,
            "scope": {"endpoint": "fraud"},
        }))
        .unwrap();
        assert_eq!(r.metric, AlertMetric::P99OverObjective);
        r.validate().unwrap();
        let mut bad = r.clone();
        bad.threshold = f64::INFINITY;
        assert!(bad.validate().unwrap_err().contains("threshold"));
    }

    #[test]
    fn scopes_match_every_field_they_set() {
        let labels: std::collections::BTreeMap<String, String> =
            [("site".to_string(), "lyon".to_string())].into();
        let any = AlertScope::default();
        assert!(any.matches("d1", &labels, Some("fraud"), Some("blue")));
        let s = AlertScope {
            endpoint: Some("fraud".into()),
            labels: labels.clone(),
            ..AlertScope::default()
        };
        assert!(s.matches("d1", &labels, Some("fraud"), Some("blue")));
        assert!(!s.matches("d1", &labels, Some("spam"), Some("blue")));
        assert!(!s.matches("d1", &Default::default(), Some("fraud"), Some("blue")));
        assert!(s.matches("d1", &labels, None, None), "device-level metrics");
    }
}
