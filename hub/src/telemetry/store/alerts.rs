//! Alert rules created through the API, and the alerts that are active.

use redb::{ReadableDatabase, ReadableTable};

use super::{be, TelemetryStore, ACTIVE_ALERTS, ALERT_RULES};
use crate::api::types::{ActiveAlert, AlertRule};
use crate::store::redb_store::{decode, encode};
use crate::store::StoreError;

impl TelemetryStore {
    /// Rules created through the API.
    pub fn alert_rules(&self) -> Result<Vec<AlertRule>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(ALERT_RULES).map_err(be)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(be)? {
            out.push(decode(item.map_err(be)?.1.value())?);
        }
        Ok(out)
    }

    /// Stores a new API rule; a rule of that name must not exist.
    pub fn create_alert_rule(&self, rule: &AlertRule) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        {
            let mut t = tx.open_table(ALERT_RULES).map_err(be)?;
            if t.get(rule.name.as_str()).map_err(be)?.is_some() {
                return Err(StoreError::Conflict(format!(
                    "alert rule {} exists",
                    rule.name
                )));
            }
            t.insert(rule.name.as_str(), encode(rule)?.as_slice())
                .map_err(be)?;
        }
        tx.commit().map_err(be)
    }

    /// Removes an API rule.
    pub fn delete_alert_rule(&self, name: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        {
            let mut t = tx.open_table(ALERT_RULES).map_err(be)?;
            if t.remove(name).map_err(be)?.is_none() {
                return Err(StoreError::NotFound(format!("alert rule {name}")));
            }
        }
        tx.commit().map_err(be)
    }

    /// The active alerts.
    pub fn active_alerts(&self) -> Result<Vec<ActiveAlert>, StoreError> {
        let tx = self.db.begin_read().map_err(be)?;
        let t = tx.open_table(ACTIVE_ALERTS).map_err(be)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(be)? {
            out.push(decode(item.map_err(be)?.1.value())?);
        }
        Ok(out)
    }

    /// Records fired alerts and forgets resolved ones, in one transaction.
    pub fn update_alerts(
        &self,
        fired: &[ActiveAlert],
        resolved: &[ActiveAlert],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(be)?;
        {
            let mut t = tx.open_table(ACTIVE_ALERTS).map_err(be)?;
            for a in fired {
                t.insert((a.rule.as_str(), a.subject.as_str()), encode(a)?.as_slice())
                    .map_err(be)?;
            }
            for a in resolved {
                t.remove((a.rule.as_str(), a.subject.as_str()))
                    .map_err(be)?;
            }
        }
        tx.commit().map_err(be)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::default_rules;
    use crate::api::types::AlertMetric;

    #[test]
    fn rules_and_active_alerts_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let s = TelemetryStore::open(&dir.path().join("t.redb")).unwrap();
        let r = default_rules().remove(0);
        s.create_alert_rule(&r).unwrap();
        assert!(s.create_alert_rule(&r).is_err());
        assert_eq!(s.alert_rules().unwrap(), vec![r.clone()]);
        s.delete_alert_rule(&r.name).unwrap();
        assert!(s.delete_alert_rule(&r.name).is_err());
        let a = ActiveAlert {
            rule: "drift".into(),
            subject: "endpoint/fraud/blue".into(),
            metric: AlertMetric::Psi,
            value: 0.4,
            threshold: 0.2,
            since: "t".into(),
            details: serde_json::json!({"features": []}),
        };
        s.update_alerts(std::slice::from_ref(&a), &[]).unwrap();
        assert_eq!(s.active_alerts().unwrap(), vec![a.clone()]);
        s.update_alerts(&[], &[a]).unwrap();
        assert!(s.active_alerts().unwrap().is_empty());
    }
}
