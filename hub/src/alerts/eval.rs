//! The alert evaluator: windows and presence in, fire and resolve actions out.
//!
//! Per rule and *subject* (`endpoint/E/D` for the fleet, `device/X/E/D` with
//! `per_device`, `device/X` for presence) it keeps an accumulator and a
//! streak. Windows add their counts to the accumulator (drift counts for
//! `psi`, requests, errors and the latency histogram otherwise); once it holds
//! the rule's `min_samples`, that is one *evaluation*: the value is computed,
//! the accumulator starts again, and the streak of breaching evaluations
//! grows or resets. At `for_windows` the alert fires; the first evaluation that
//! does not breach resolves it. With windows of a few hundred requests each,
//! one window is one evaluation, which is what the rule names.
//!
//! `p99_over_objective` divides the p99 of the merged latency histogram (a
//! bucket bound, at most 25% high) by the endpoint's objective. The
//! objectives are an input like the windows: the caller hands the current
//! ones to [`Evaluator::set_objectives`] whenever they may have changed, and
//! endpoints missing from them are never judged by that metric.
//!
//! Time comes in as `now`; nothing here reads a clock, stores or sends.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use flotilla_protocol::manifest::DriftBaseline;
use flotilla_protocol::telemetry::{FeatureDrift, Histogram, ObservedFeature, TelemetryWindow};
use flotilla_protocol::time::UtcTime;

use crate::api::types::{ActiveAlert, AlertMetric, AlertRule, FeatureDriftView};

/// What the evaluator decided.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertAction {
    /// An alert fired. For `psi` rules, `drift` holds the per-feature drift
    /// (the `drift.detected` event's data).
    Fire {
        /// The alert.
        alert: ActiveAlert,
        /// Per-feature drift, for `psi`.
        drift: Option<Vec<FeatureDriftView>>,
    },
    /// A fired alert resolved.
    Resolve {
        /// The alert as it was.
        alert: ActiveAlert,
        /// The value of the evaluation that resolved it.
        value: f64,
    },
}

/// Where to look up the drift baseline of a bundle target.
pub type BaselineLookup<'a> = &'a dyn Fn(&str) -> Option<Arc<DriftBaseline>>;

#[derive(Debug, Clone)]
enum Acc {
    Drift {
        target: String,
        features: Vec<ObservedFeature>,
    },
    Requests {
        requests: u64,
        errors: u64,
        latency_us: Box<Histogram>,
    },
}

#[derive(Debug, Clone)]
struct Group {
    acc: Option<Acc>,
    // invariant: consecutive breaching evaluations since the last one that did not breach.
    streak: u32,
}

/// One device's presence, as the hub knows it.
#[derive(Debug, Clone)]
pub struct Presence<'a> {
    /// Device id.
    pub device: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// When it went offline (last heard from); `None` while online or when
    /// it was never seen.
    pub offline_since: Option<UtcTime>,
}

/// Rules, per-subject state and the active alerts.
#[derive(Debug, Default)]
pub struct Evaluator {
    rules: Vec<AlertRule>,
    groups: HashMap<(String, String), Group>,
    // Keyed by (rule, subject).
    active: BTreeMap<(String, String), ActiveAlert>,
    // Latency objectives in ms by endpoint, as last set.
    // invariant: every value finite and > 0 (the registry validates them).
    objectives: BTreeMap<String, f64>,
}

impl Evaluator {
    /// An evaluator with `rules` and no state.
    pub fn new(rules: Vec<AlertRule>) -> Self {
        Self {
            rules,
            ..Self::default()
        }
    }

    /// Replaces the rules. State of rules that remain is kept; active alerts
    /// of rules that are gone are returned as resolved.
    pub fn set_rules(&mut self, rules: Vec<AlertRule>, now: UtcTime) -> Vec<AlertAction> {
        let _ = now;
        self.rules = rules;
        let names: std::collections::HashSet<String> =
            self.rules.iter().map(|r| r.name.clone()).collect();
        self.groups.retain(|(rule, _), _| names.contains(rule));
        let gone: Vec<(String, String)> = self
            .active
            .keys()
            .filter(|(rule, _)| !names.contains(rule))
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|k| self.active.remove(&k))
            .map(|alert| AlertAction::Resolve {
                value: alert.value,
                alert,
            })
            .collect()
    }

    /// Replaces the endpoints' latency objectives (milliseconds, by endpoint
    /// name) that `p99_over_objective` rules divide by. Cheap when nothing
    /// changed, so it may be called before every batch of windows.
    ///
    /// For those rules, an endpoint whose objective appeared, changed or went
    /// away starts again (accumulator and streak: breaches against the old
    /// objective do not count towards the new one). Its active alerts stay
    /// while it still has an objective (the next evaluation, against the new
    /// one, keeps or resolves them); alerts of endpoints without an objective
    /// (removed, endpoint deleted, or so since before a restart) are
    /// returned as resolved with their last value.
    pub fn set_objectives(&mut self, objectives: BTreeMap<String, f64>) -> Vec<AlertAction> {
        let changed: std::collections::BTreeSet<String> = self
            .objectives
            .keys()
            .chain(objectives.keys())
            .filter(|e| self.objectives.get(*e) != objectives.get(*e))
            .cloned()
            .collect();
        self.objectives = objectives;
        let latency_rules: std::collections::HashSet<&str> = self
            .rules
            .iter()
            .filter(|r| r.metric == AlertMetric::P99OverObjective)
            .map(|r| r.name.as_str())
            .collect();
        if !changed.is_empty() {
            self.groups.retain(|(rule, subject), _| {
                !(latency_rules.contains(rule.as_str())
                    && subject_endpoint(subject).is_some_and(|e| changed.contains(e)))
            });
        }
        let unjudged: Vec<(String, String)> = self
            .active
            .iter()
            .filter(|(_, a)| {
                a.metric == AlertMetric::P99OverObjective
                    && subject_endpoint(&a.subject).is_none_or(|e| !self.objectives.contains_key(e))
            })
            .map(|(k, _)| k.clone())
            .collect();
        unjudged
            .into_iter()
            .filter_map(|k| self.active.remove(&k))
            .map(|alert| AlertAction::Resolve {
                value: alert.value,
                alert,
            })
            .collect()
    }

    /// Restores alerts that were active when the hub stopped.
    pub fn restore(&mut self, alerts: Vec<ActiveAlert>) {
        for a in alerts {
            self.active.insert((a.rule.clone(), a.subject.clone()), a);
        }
    }

    /// The active alerts, by rule and subject.
    pub fn active(&self) -> Vec<ActiveAlert> {
        self.active.values().cloned().collect()
    }

    /// Adds one stored window of a device with `labels`.
    pub fn handle_window(
        &mut self,
        now: UtcTime,
        w: &TelemetryWindow,
        labels: &BTreeMap<String, String>,
        baseline: BaselineLookup<'_>,
    ) -> Vec<AlertAction> {
        let mut out = Vec::new();
        let rules = self.rules.clone();
        for rule in &rules {
            match rule.metric {
                AlertMetric::Psi => {
                    for d in &w.drift {
                        if !rule.scope.matches(
                            &w.device,
                            labels,
                            Some(&d.endpoint),
                            Some(&d.deployment),
                        ) {
                            continue;
                        }
                        let subject = subject(rule, &w.device, &d.endpoint, &d.deployment);
                        let features: Vec<&ObservedFeature> =
                            d.inputs.iter().chain(&d.outputs).collect();
                        if let Some((value, drift)) =
                            self.add_drift(rule, &subject, &d.target, &features, baseline)
                        {
                            let details = serde_json::json!({
                                "endpoint": d.endpoint,
                                "deployment": d.deployment,
                                "target": d.target,
                                "features": drift,
                            });
                            out.extend(self.judge(rule, subject, value, details, now, Some(drift)));
                        }
                    }
                }
                AlertMetric::ErrorRate | AlertMetric::P99Ms | AlertMetric::P99OverObjective => {
                    for e in &w.endpoints {
                        if !rule.scope.matches(
                            &w.device,
                            labels,
                            Some(&e.endpoint),
                            Some(&e.deployment),
                        ) {
                            continue;
                        }
                        let objective = self.objectives.get(&e.endpoint).copied();
                        if rule.metric == AlertMetric::P99OverObjective && objective.is_none() {
                            continue;
                        }
                        let subject = subject(rule, &w.device, &e.endpoint, &e.deployment);
                        let group = self.group(rule, &subject);
                        let acc = group.acc.get_or_insert_with(|| Acc::Requests {
                            requests: 0,
                            errors: 0,
                            latency_us: Box::default(),
                        });
                        let Acc::Requests {
                            requests,
                            errors,
                            latency_us,
                        } = acc
                        else {
                            continue;
                        };
                        *requests = requests.saturating_add(e.requests);
                        *errors = errors.saturating_add(e.errors_total());
                        latency_us.merge(&e.latency_us);
                        if *requests < rule.min_samples() {
                            continue;
                        }
                        let p99_ms = latency_us.quantile(0.99).unwrap_or(0) as f64 / 1000.0;
                        let mut details = serde_json::json!({
                            "endpoint": e.endpoint,
                            "deployment": e.deployment,
                            "requests": *requests,
                            "errors": *errors,
                        });
                        let value = match (rule.metric, objective) {
                            (AlertMetric::ErrorRate, _) => {
                                *errors as f64 / (*requests).max(1) as f64
                            }
                            (AlertMetric::P99OverObjective, Some(objective)) => {
                                details["p99_ms"] = p99_ms.into();
                                details["objective_p99_ms"] = objective.into();
                                p99_ms / objective
                            }
                            _ => {
                                details["p99_ms"] = p99_ms.into();
                                p99_ms
                            }
                        };
                        group.acc = None;
                        out.extend(self.judge(rule, subject, value, details, now, None));
                    }
                }
                AlertMetric::DeviceOfflineSecs => {}
            }
        }
        out
    }

    /// Evaluates presence rules for every known device.
    pub fn handle_presence(&mut self, now: UtcTime, devices: &[Presence<'_>]) -> Vec<AlertAction> {
        let mut out = Vec::new();
        let rules: Vec<AlertRule> = self
            .rules
            .iter()
            .filter(|r| r.metric == AlertMetric::DeviceOfflineSecs)
            .cloned()
            .collect();
        for rule in &rules {
            for p in devices {
                if !rule.scope.matches(p.device, p.labels, None, None) {
                    continue;
                }
                let value = p
                    .offline_since
                    .map_or(0.0, |t| now.0.saturating_sub(t.0).max(0) as f64);
                let subject = format!("device/{}", p.device);
                let details = serde_json::json!({
                    "device": p.device,
                    "offline_since": p.offline_since.map(|t| t.to_string()),
                });
                out.extend(self.judge(rule, subject, value, details, now, None));
            }
        }
        out
    }

    fn group(&mut self, rule: &AlertRule, subject: &str) -> &mut Group {
        self.groups
            .entry((rule.name.clone(), subject.to_string()))
            .or_insert(Group {
                acc: None,
                streak: 0,
            })
    }

    /// Adds drift counts; when the accumulator holds enough rows, returns
    /// the largest PSI and the per-feature drift, and starts again.
    fn add_drift(
        &mut self,
        rule: &AlertRule,
        subject: &str,
        target: &str,
        features: &[&ObservedFeature],
        baseline: BaselineLookup<'_>,
    ) -> Option<(f64, Vec<FeatureDriftView>)> {
        let min = rule.min_samples();
        let group = self.group(rule, subject);
        // A new bundle on the deployment: its bins differ; start again.
        let fresh = !matches!(&group.acc, Some(Acc::Drift { target: t, .. }) if t == target);
        if fresh {
            group.acc = Some(Acc::Drift {
                target: target.to_string(),
                features: Vec::new(),
            });
        }
        let Some(Acc::Drift { features: acc, .. }) = &mut group.acc else {
            return None;
        };
        for f in features {
            match acc.iter_mut().find(|a| a.name == f.name) {
                Some(a) => {
                    if !a.counts.merge(&f.counts) {
                        // Counts of another shape: keep the newer ones.
                        *a = (*f).clone();
                    }
                }
                None => acc.push((*f).clone()),
            }
        }
        let rows = acc.iter().map(|f| f.counts.total()).max().unwrap_or(0);
        if rows < min {
            return None;
        }
        let observed = std::mem::take(acc);
        group.acc = None;
        let base = baseline(target)?;
        let drift: Vec<FeatureDriftView> = observed
            .iter()
            .filter_map(|o| {
                let b = base.features.iter().find(|b| b.name == o.name)?;
                let d = FeatureDrift::compute(b, &o.counts).ok()?;
                Some(view(d, "input"))
            })
            .collect();
        let max = drift
            .iter()
            .map(|d| d.psi)
            .fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p))))?;
        Some((max, drift))
    }

    /// One evaluation of `rule` for `subject`.
    fn judge(
        &mut self,
        rule: &AlertRule,
        subject: String,
        value: f64,
        details: serde_json::Value,
        now: UtcTime,
        drift: Option<Vec<FeatureDriftView>>,
    ) -> Option<AlertAction> {
        let breached = rule.condition.breached(value, rule.threshold);
        let group = self.group(rule, &subject);
        let key = (rule.name.clone(), subject.clone());
        if !breached {
            group.streak = 0;
            let alert = self.active.remove(&key)?;
            return Some(AlertAction::Resolve { alert, value });
        }
        group.streak = group.streak.saturating_add(1);
        let streak = group.streak;
        if let Some(a) = self.active.get_mut(&key) {
            a.value = value;
            return None;
        }
        if streak < rule.for_windows {
            return None;
        }
        let alert = ActiveAlert {
            rule: rule.name.clone(),
            subject,
            metric: rule.metric,
            value,
            threshold: rule.threshold,
            since: now.to_string(),
            details,
        };
        self.active.insert(key, alert.clone());
        Some(AlertAction::Fire { alert, drift })
    }
}

fn subject(rule: &AlertRule, device: &str, endpoint: &str, deployment: &str) -> String {
    if rule.per_device {
        format!("device/{device}/{endpoint}/{deployment}")
    } else {
        format!("endpoint/{endpoint}/{deployment}")
    }
}

/// The endpoint of an `endpoint/E/D` or `device/X/E/D` subject: the part
/// before the last (endpoint and deployment names hold no `/`; a device id
/// might). `None` for `device/X`.
fn subject_endpoint(subject: &str) -> Option<&str> {
    let (kind, rest) = subject.split_once('/')?;
    let (head, _deployment) = rest.rsplit_once('/')?;
    match kind {
        "endpoint" => Some(head),
        "device" => head.rsplit_once('/').map(|(_device, endpoint)| endpoint),
        _ => None,
    }
}

/// The API view of one feature's drift.
pub fn view(d: FeatureDrift, kind: &str) -> FeatureDriftView {
    FeatureDriftView {
        name: d.name,
        kind: kind.into(),
        psi: d.psi,
        js: d.js,
        ks: d.ks,
        missing_rate: d.missing_rate,
        out_of_range_rate: d.out_of_range_rate,
        count: d.count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::default_rules;
    use flotilla_protocol::manifest::{FeatureBaseline, FeatureDistribution};
    use flotilla_protocol::telemetry::{DriftObservation, EndpointStats, FeatureCounts};

    fn baseline() -> Arc<DriftBaseline> {
        Arc::new(DriftBaseline {
            rows: 1000,
            features: vec![FeatureBaseline {
                name: "amount".into(),
                missing_rate: 0.0,
                distribution: FeatureDistribution::Numeric {
                    edges: vec![0.0, 1.0, 2.0, 3.0, 4.0],
                    counts: vec![250, 250, 250, 250],
                },
            }],
        })
    }

    fn window(seq: u64, bins: Vec<u64>, requests: u64, errors: u64) -> TelemetryWindow {
        let mut w = TelemetryWindow::new(
            "dev-1",
            UtcTime(10 * seq as i64),
            UtcTime(10 * seq as i64 + 10),
        );
        (w.epoch, w.first_seq, w.last_seq) = (1, seq, seq);
        let mut e = EndpointStats::new("fraud", "blue");
        e.requests = requests;
        if errors > 0 {
            e.errors.insert("runtime".into(), errors);
        }
        e.latency_us.record_n(2_000, requests);
        w.endpoints.push(e);
        w.drift.push(DriftObservation {
            endpoint: "fraud".into(),
            deployment: "blue".into(),
            target: "models/fraud/1/manifest.cbor".into(),
            inputs: vec![ObservedFeature {
                name: "amount".into(),
                counts: FeatureCounts::Numeric {
                    bins,
                    below: 0,
                    above: 0,
                    missing: 0,
                },
            }],
            outputs: vec![],
        });
        w
    }

    fn run(e: &mut Evaluator, w: &TelemetryWindow) -> Vec<AlertAction> {
        let b = baseline();
        e.handle_window(UtcTime(w.end.0), w, &BTreeMap::new(), &|_| Some(b.clone()))
    }

    #[test]
    fn matching_counts_never_fire_and_shifted_counts_fire_on_the_third_window() {
        let mut e = Evaluator::new(default_rules());
        for seq in 1..=50 {
            assert!(run(&mut e, &window(seq, vec![100, 100, 100, 100], 400, 0)).is_empty());
        }
        let shifted = vec![10, 30, 60, 300];
        assert!(run(&mut e, &window(51, shifted.clone(), 400, 0)).is_empty());
        assert!(run(&mut e, &window(52, shifted.clone(), 400, 0)).is_empty());
        let fired = run(&mut e, &window(53, shifted.clone(), 400, 0));
        assert!(
            matches!(&fired[..], [AlertAction::Fire { alert, drift: Some(d) }]
                if alert.rule == "drift" && alert.subject == "endpoint/fraud/blue" && d[0].psi > 0.2),
            "{fired:?}"
        );
        assert!(
            run(&mut e, &window(54, shifted, 400, 0)).is_empty(),
            "fires once"
        );
        assert_eq!(e.active().len(), 1);
        let resolved = run(&mut e, &window(55, vec![100, 100, 100, 100], 400, 0));
        assert!(
            matches!(&resolved[..], [AlertAction::Resolve { .. }]),
            "{resolved:?}"
        );
        assert!(e.active().is_empty());
    }

    #[test]
    fn small_windows_are_merged_until_the_rule_has_enough_rows() {
        let mut e = Evaluator::new(default_rules());
        let shifted = vec![1, 2, 4, 23];
        let mut fired_at = None;
        for seq in 1..=40 {
            let out = run(&mut e, &window(seq, shifted.clone(), 30, 0));
            if out.iter().any(|a| matches!(a, AlertAction::Fire { .. })) {
                fired_at = Some(seq);
                break;
            }
        }
        // 30 rows a window: an evaluation every 10 windows, the third at 30.
        assert_eq!(fired_at, Some(30));
    }

    #[test]
    fn error_rate_fires_above_five_percent_and_resolves() {
        let mut e = Evaluator::new(default_rules());
        assert!(run(&mut e, &window(1, vec![1, 1, 1, 1], 200, 4)).is_empty());
        let out = run(&mut e, &window(2, vec![1, 1, 1, 1], 200, 20));
        assert!(
            matches!(&out[..], [AlertAction::Fire { alert, .. }] if alert.rule == "error-rate"),
            "{out:?}"
        );
        let out = run(&mut e, &window(3, vec![1, 1, 1, 1], 200, 0));
        assert!(matches!(&out[..], [AlertAction::Resolve { .. }]));
    }

    /// A window of `requests` requests to fraud/blue, all at `latency_us`.
    fn timed(seq: u64, requests: u64, latency_us: u64) -> TelemetryWindow {
        let mut w = TelemetryWindow::new(
            "dev-1",
            UtcTime(10 * seq as i64),
            UtcTime(10 * seq as i64 + 10),
        );
        (w.epoch, w.first_seq, w.last_seq) = (1, seq, seq);
        let mut e = EndpointStats::new("fraud", "blue");
        e.requests = requests;
        e.latency_us.record_n(latency_us, requests);
        w.endpoints.push(e);
        w
    }

    fn objectives(ms: &[(&str, f64)]) -> BTreeMap<String, f64> {
        ms.iter().map(|(e, v)| (e.to_string(), *v)).collect()
    }

    #[test]
    fn p99_over_the_objective_fires_on_the_third_evaluation_and_resolves_when_it_drops() {
        let mut e = Evaluator::new(default_rules());
        assert!(e.set_objectives(objectives(&[("fraud", 10.0)])).is_empty());
        assert!(run(&mut e, &timed(1, 200, 20_000)).is_empty());
        assert!(run(&mut e, &timed(2, 200, 20_000)).is_empty());
        let fired = run(&mut e, &timed(3, 200, 20_000));
        let [AlertAction::Fire { alert, drift: None }] = &fired[..] else {
            panic!("{fired:?}");
        };
        assert_eq!(
            (alert.rule.as_str(), alert.subject.as_str()),
            ("latency-objective", "endpoint/fraud/blue")
        );
        assert_eq!(alert.metric, AlertMetric::P99OverObjective);
        let p99 = alert.details["p99_ms"].as_f64().unwrap();
        assert!((20.0..=25.0).contains(&p99), "{p99}");
        assert_eq!(alert.details["objective_p99_ms"], 10.0);
        assert!((alert.value - p99 / 10.0).abs() < 1e-9, "{}", alert.value);
        assert!(run(&mut e, &timed(4, 200, 20_000)).is_empty(), "fires once");
        let resolved = run(&mut e, &timed(5, 200, 2_000));
        assert!(
            matches!(&resolved[..], [AlertAction::Resolve { alert, value }]
                if alert.rule == "latency-objective" && *value < 1.0),
            "{resolved:?}"
        );
        assert!(e.active().is_empty());
    }

    #[test]
    fn endpoints_without_an_objective_are_never_judged_on_latency() {
        let mut e = Evaluator::new(default_rules());
        for seq in 1..=5 {
            assert!(run(&mut e, &timed(seq, 200, 500_000)).is_empty());
        }
        assert!(e.set_objectives(objectives(&[("spam", 1.0)])).is_empty());
        for seq in 6..=10 {
            assert!(run(&mut e, &timed(seq, 200, 500_000)).is_empty());
        }
        assert!(e.active().is_empty());
        // Fewer requests than min_samples (100): no evaluation yet.
        e.set_objectives(objectives(&[("fraud", 1.0)]));
        for seq in 11..=13 {
            assert!(run(&mut e, &timed(seq, 40, 500_000)).is_empty());
        }
    }

    #[test]
    fn a_changed_objective_restarts_the_streak_and_a_removed_one_resolves() {
        let mut e = Evaluator::new(default_rules());
        e.set_objectives(objectives(&[("fraud", 10.0)]));
        assert!(run(&mut e, &timed(1, 200, 20_000)).is_empty());
        assert!(run(&mut e, &timed(2, 200, 20_000)).is_empty());
        // Breaches against 10 ms do not count towards 12 ms.
        assert!(e.set_objectives(objectives(&[("fraud", 12.0)])).is_empty());
        assert!(run(&mut e, &timed(3, 200, 20_000)).is_empty());
        assert!(run(&mut e, &timed(4, 200, 20_000)).is_empty());
        let fired = run(&mut e, &timed(5, 200, 20_000));
        assert!(
            matches!(&fired[..], [AlertAction::Fire { .. }]),
            "{fired:?}"
        );
        // A looser objective keeps the alert until the next evaluation.
        assert!(e.set_objectives(objectives(&[("fraud", 100.0)])).is_empty());
        assert_eq!(e.active().len(), 1);
        let out = run(&mut e, &timed(6, 200, 20_000));
        assert!(matches!(&out[..], [AlertAction::Resolve { .. }]), "{out:?}");
        // Fired again, then the objective is removed: resolved at once.
        e.set_objectives(objectives(&[("fraud", 10.0)]));
        for seq in 7..=9 {
            run(&mut e, &timed(seq, 200, 20_000));
        }
        assert_eq!(e.active().len(), 1);
        let out = e.set_objectives(BTreeMap::new());
        assert!(
            matches!(&out[..], [AlertAction::Resolve { alert, .. }] if alert.rule == "latency-objective"),
            "{out:?}"
        );
        assert!(e.active().is_empty());
        assert!(run(&mut e, &timed(10, 200, 20_000)).is_empty());
    }

    #[test]
    fn restored_latency_alerts_of_endpoints_without_an_objective_resolve() {
        let mut e = Evaluator::new(default_rules());
        let alert = |subject: &str| ActiveAlert {
            rule: "latency-objective".into(),
            subject: subject.into(),
            metric: AlertMetric::P99OverObjective,
            value: 2.0,
            threshold: 1.0,
            since: UtcTime(0).to_string(),
            details: serde_json::Value::Null,
        };
        e.restore(vec![
            alert("endpoint/fraud/blue"),
            alert("endpoint/spam/blue"),
        ]);
        let out = e.set_objectives(objectives(&[("fraud", 10.0)]));
        assert!(
            matches!(&out[..], [AlertAction::Resolve { alert, .. }] if alert.subject == "endpoint/spam/blue"),
            "{out:?}"
        );
        assert_eq!(e.active().len(), 1);
    }

    #[test]
    fn subjects_name_their_endpoint() {
        assert_eq!(subject_endpoint("endpoint/fraud/blue"), Some("fraud"));
        assert_eq!(subject_endpoint("device/dev-1/fraud/blue"), Some("fraud"));
        assert_eq!(subject_endpoint("device/a/b/fraud/blue"), Some("fraud"));
        assert_eq!(subject_endpoint("device/dev-1"), None);
    }

    #[test]
    fn offline_devices_fire_after_five_minutes_and_deleted_rules_resolve() {
        let mut e = Evaluator::new(default_rules());
        let labels = BTreeMap::new();
        let p = |since| Presence {
            device: "dev-1",
            labels: &labels,
            offline_since: since,
        };
        assert!(e
            .handle_presence(UtcTime(1000), &[p(Some(UtcTime(900)))])
            .is_empty());
        let out = e.handle_presence(UtcTime(1300), &[p(Some(UtcTime(900)))]);
        assert!(
            matches!(&out[..], [AlertAction::Fire { alert, .. }] if alert.subject == "device/dev-1")
        );
        let out = e.set_rules(Vec::new(), UtcTime(1400));
        assert!(matches!(&out[..], [AlertAction::Resolve { .. }]));
    }
}
