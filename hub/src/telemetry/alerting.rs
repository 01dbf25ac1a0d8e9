//! Alert rules and alerts at the hub: the evaluator's actions become stored
//! active alerts and events; rules are listed, created and deleted; the
//! presence check feeds `device_offline_secs` rules. The endpoints' latency
//! objectives are read from the registry before every batch of windows and at
//! every presence check (every 5 s), so a changed objective applies to the
//! next evaluation and the alerts of a removed one resolve within seconds.

use std::collections::BTreeMap;

use flotilla_protocol::telemetry::event::{ALERT_FIRED, ALERT_RESOLVED, DRIFT_DETECTED};
use flotilla_protocol::telemetry::TelemetryWindow;
use flotilla_protocol::time::UtcTime;

use super::{lock, Telemetry};
use crate::alerts::eval::{AlertAction, Presence};
use crate::alerts::{effective_rules, MAX_RULES};
use crate::api::types::{ActiveAlert, AlertRule, AlertRuleView, DeviceStatus};
use crate::audit::AuditDraft;
use crate::registry::RegistryError;

impl Telemetry {
    /// Feeds stored windows (with their devices' labels) to the evaluator
    /// and applies what it decides.
    pub(crate) fn evaluate_windows(
        &self,
        windows: &[TelemetryWindow],
        labels: &BTreeMap<String, BTreeMap<String, String>>,
        now: UtcTime,
    ) {
        let empty = BTreeMap::new();
        let objectives = self.objectives();
        let mut actions = Vec::new();
        {
            let mut state = lock(&self.alerts);
            if let Some(o) = objectives {
                actions.extend(state.evaluator.set_objectives(o));
            }
            for w in windows {
                let l = labels.get(&w.device).unwrap_or(&empty);
                actions.extend(
                    state
                        .evaluator
                        .handle_window(now, w, l, &|t| self.baseline(t)),
                );
            }
        }
        self.apply_alert_actions(actions);
    }

    /// The endpoints' latency objectives (ms, by endpoint), read from the
    /// registry (blocking); `None` when it cannot be read, so the evaluator
    /// keeps the ones it has rather than resolving every latency alert.
    fn objectives(&self) -> Option<BTreeMap<String, f64>> {
        match self.registry.endpoints() {
            Ok(endpoints) => Some(
                endpoints
                    .into_iter()
                    .filter_map(|e| e.objective_p99_ms.map(|ms| (e.name, ms)))
                    .collect(),
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot read endpoints for their latency objectives");
                None
            }
        }
    }

    /// Stores fired and resolved alerts, then emits their events
    /// (`drift.detected` before `alert.fired` for drift rules).
    pub(crate) fn apply_alert_actions(&self, actions: Vec<AlertAction>) {
        if actions.is_empty() {
            return;
        }
        let (mut fired, mut resolved) = (Vec::new(), Vec::new());
        for a in &actions {
            match a {
                AlertAction::Fire { alert, .. } => fired.push(alert.clone()),
                AlertAction::Resolve { alert, .. } => resolved.push(alert.clone()),
            }
        }
        if let Err(e) = self.store.update_alerts(&fired, &resolved) {
            tracing::error!(error = %e, "cannot store alert state");
        }
        for a in actions {
            match a {
                AlertAction::Fire { alert, drift } => {
                    tracing::warn!(rule = %alert.rule, subject = %alert.subject, value = alert.value, "alert fired");
                    if let Some(features) = drift {
                        let mut data = alert.details.clone();
                        if let Some(m) = data.as_object_mut() {
                            m.insert(
                                "features".into(),
                                serde_json::to_value(&features).unwrap_or_default(),
                            );
                            m.insert("rule".into(), alert.rule.clone().into());
                            m.insert("psi".into(), alert.value.into());
                        }
                        self.registry
                            .emit(DRIFT_DETECTED, &alert.subject, "hub", data);
                    }
                    let object = format!("alert/{}/{}", alert.rule, alert.subject);
                    let data = serde_json::to_value(&alert).unwrap_or_default();
                    self.registry.emit(ALERT_FIRED, &object, "hub", data);
                }
                AlertAction::Resolve { alert, value } => {
                    tracing::info!(rule = %alert.rule, subject = %alert.subject, value, "alert resolved");
                    let object = format!("alert/{}/{}", alert.rule, alert.subject);
                    let mut data = serde_json::to_value(&alert).unwrap_or_default();
                    if let Some(m) = data.as_object_mut() {
                        m.insert("resolved_value".into(), value.into());
                    }
                    self.registry.emit(ALERT_RESOLVED, &object, "hub", data);
                }
            }
        }
    }

    /// Every rule in effect, with its source.
    pub fn alert_rules(&self) -> Result<Vec<AlertRuleView>, RegistryError> {
        let api = self.store.alert_rules()?;
        let state = lock(&self.alerts);
        Ok(effective_rules(state.defaults, &state.config_rules, &api)
            .into_iter()
            .map(|(rule, source)| AlertRuleView {
                rule,
                source: source.into(),
            })
            .collect())
    }

    fn reload_rules(&self) -> Result<(), RegistryError> {
        let api = self.store.alert_rules()?;
        let actions = {
            let mut state = lock(&self.alerts);
            let rules = effective_rules(state.defaults, &state.config_rules, &api)
                .into_iter()
                .map(|(r, _)| r)
                .collect();
            state.evaluator.set_rules(rules, crate::now())
        };
        self.apply_alert_actions(actions);
        Ok(())
    }

    /// Adds a rule through the API; its name must be new.
    pub fn create_alert_rule(
        &self,
        actor: &str,
        rule: AlertRule,
    ) -> Result<AlertRuleView, RegistryError> {
        rule.validate()
            .map_err(|e| RegistryError::BadRequest(format!("alert rule: {e}")))?;
        let existing = self.alert_rules()?;
        if existing.iter().any(|r| r.rule.name == rule.name) {
            return Err(RegistryError::Conflict(format!(
                "an alert rule named {} exists",
                rule.name
            )));
        }
        if existing.len() >= MAX_RULES {
            return Err(RegistryError::Busy(format!(
                "at most {MAX_RULES} alert rules"
            )));
        }
        self.store.create_alert_rule(&rule)?;
        self.audit(
            actor,
            "alert_rule.create",
            &format!("alert_rule/{}", rule.name),
        );
        self.reload_rules()?;
        Ok(AlertRuleView {
            rule,
            source: "api".into(),
        })
    }

    /// Deletes a rule created through the API; its active alerts resolve.
    pub fn delete_alert_rule(&self, actor: &str, name: &str) -> Result<(), RegistryError> {
        if !self.store.alert_rules()?.iter().any(|r| r.name == name) {
            let known = self.alert_rules()?.into_iter().any(|r| r.rule.name == name);
            return Err(if known {
                RegistryError::Conflict(format!(
                    "alert rule {name} comes from the configuration; change it there"
                ))
            } else {
                RegistryError::NotFound(format!("alert rule {name} does not exist"))
            });
        }
        self.store.delete_alert_rule(name)?;
        self.audit(actor, "alert_rule.delete", &format!("alert_rule/{name}"));
        self.reload_rules()
    }

    /// Alerts fired and not resolved.
    pub fn active_alerts(&self) -> Vec<ActiveAlert> {
        lock(&self.alerts).evaluator.active()
    }

    /// Appends an audit entry for a telemetry-side change (after the change:
    /// the two live in different databases).
    pub(crate) fn audit(&self, actor: &str, action: &str, object: &str) {
        let now = crate::now().to_string();
        if let Err(e) = self
            .registry
            .store()
            .append_audit(AuditDraft::new(actor, action, object, ""), &now)
        {
            tracing::error!(error = %e, %action, %object, "cannot append to the audit log");
        }
    }

    /// Devices enrolled and not revoked, and how many of them are online.
    pub fn device_counts(&self) -> (u64, u64) {
        let Ok(devices) = self.registry.devices() else {
            return (0, 0);
        };
        let presence = lock(&self.presence);
        let active: Vec<_> = devices
            .iter()
            .filter(|d| d.status == DeviceStatus::Active)
            .collect();
        let online = active
            .iter()
            .filter(|d| d.connected || presence.get(&d.id).is_some_and(|p| p.online))
            .count();
        (active.len() as u64, online as u64)
    }

    /// Evaluates `device_offline_secs` rules (blocking; every few seconds).
    pub(crate) fn check_presence(&self) {
        let Ok(devices) = self.registry.devices() else {
            return;
        };
        let now = crate::now();
        let rows: Vec<(String, BTreeMap<String, String>, Option<UtcTime>)> = {
            let presence = lock(&self.presence);
            devices
                .into_iter()
                .filter(|d| d.status == DeviceStatus::Active)
                .map(|d| {
                    let mqtt = presence.get(&d.id);
                    let online = d.connected || mqtt.is_some_and(|p| p.online);
                    let quic_seen = d.last_seen.as_deref().and_then(|s| UtcTime::parse(s).ok());
                    let heard = match (quic_seen, mqtt.map(|p| p.last_heard)) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                    (d.id, d.labels, if online { None } else { heard })
                })
                .collect()
        };
        let list: Vec<Presence<'_>> = rows
            .iter()
            .map(|(device, labels, since)| Presence {
                device,
                labels,
                offline_since: *since,
            })
            .collect();
        let objectives = self.objectives();
        let actions = {
            let mut state = lock(&self.alerts);
            let mut actions = objectives
                .map(|o| state.evaluator.set_objectives(o))
                .unwrap_or_default();
            actions.extend(state.evaluator.handle_presence(now, &list));
            actions
        };
        self.apply_alert_actions(actions);
    }
}
