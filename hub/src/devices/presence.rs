//! What the hub last heard from each device over QUIC: whether it is
//! connected, when it was last seen, its agent version and hardware, and the
//! latest status of each of its deployments.
//!
//! These are bookkeeping writes on the device record (no audit entry: the
//! device, not an operator, changes them). The sync server calls them on
//! blocking threads and decides *when* (connect, status frame, disconnect);
//! this module only turns wire frames into the API's view and publishes the
//! matching events: `device.online`, `device.offline`, and
//! `deployment.activated` / `deployment.failed` / `deployment.rolled_back`
//! (object `device/ID/ENDPOINT/DEPLOYMENT`).

use flotilla_protocol::wire::{AgentHello, DeploymentState, DeploymentStatus, Inventory};

use crate::api::types::{AcceleratorView, DeploymentReport, DeviceView, InventoryView};
use crate::registry::{Registry, RegistryError};
use crate::store::StoreError;

/// The API's view of an agent's inventory.
pub fn inventory_view(inv: &Inventory) -> InventoryView {
    InventoryView {
        cpus: inv.cpus,
        memory_bytes: inv.memory_bytes,
        accelerators: inv
            .accelerators
            .iter()
            .map(|a| AcceleratorView {
                kind: serde_json::to_value(a.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("{:?}", a.kind).to_lowercase()),
                name: a.name.clone(),
                memory_bytes: a.memory_bytes,
            })
            .collect(),
    }
}

/// The API's view of one status report received at `reported_at`.
pub fn deployment_report(s: &DeploymentStatus, reported_at: &str) -> DeploymentReport {
    let (state, reason, have, need) = match &s.state {
        DeploymentState::Fetching { have, need } => ("fetching", None, Some(*have), Some(*need)),
        DeploymentState::Staged => ("staged", None, None, None),
        DeploymentState::Trial => ("trial", None, None, None),
        DeploymentState::Active => ("active", None, None, None),
        DeploymentState::Failed { reason } => ("failed", Some(reason.clone()), None, None),
        DeploymentState::RolledBack { reason } => ("rolled_back", Some(reason.clone()), None, None),
        _ => ("unknown", None, None, None),
    };
    DeploymentReport {
        endpoint: s.endpoint.clone(),
        deployment: s.deployment.clone(),
        target: s.target.clone(),
        state: state.into(),
        reason,
        have_bytes: have,
        need_bytes: need,
        active: s.active.clone(),
        director_version: s.director_version,
        since: s.since.to_string(),
        reported_at: reported_at.into(),
    }
}

/// The event a status report raises, if any.
fn deployment_event(s: &DeploymentState) -> Option<&'static str> {
    match s {
        DeploymentState::Active => Some("deployment.activated"),
        DeploymentState::Failed { .. } => Some("deployment.failed"),
        DeploymentState::RolledBack { .. } => Some("deployment.rolled_back"),
        _ => None,
    }
}

/// Same report apart from when the hub received it.
fn same_report(a: &DeploymentReport, b: &DeploymentReport) -> bool {
    DeploymentReport {
        reported_at: String::new(),
        ..a.clone()
    } == DeploymentReport {
        reported_at: String::new(),
        ..b.clone()
    }
}

fn key(r: &DeploymentReport) -> (&str, &str) {
    (r.endpoint.as_str(), r.deployment.as_str())
}

impl Registry {
    fn touch(
        &self,
        id: &str,
        f: &mut dyn FnMut(&mut DeviceView) -> Result<(), StoreError>,
    ) -> Result<DeviceView, RegistryError> {
        Ok(self
            .store()
            .update_device(id, f, None, &crate::now().to_string())?)
    }

    /// A device connected and said hello: it is online, with this agent
    /// version, hardware and set of deployment statuses (replacing the stored
    /// ones: the hello lists every deployment).
    pub fn record_connect(&self, id: &str, hello: &AgentHello) -> Result<(), RegistryError> {
        let now = crate::now().to_string();
        let mut reports: Vec<DeploymentReport> = hello
            .state
            .iter()
            .map(|s| deployment_report(s, &now))
            .collect();
        reports.sort_by(|a, b| key(a).cmp(&key(b)));
        reports.dedup_by(|a, b| key(a) == key(b));
        self.touch(id, &mut |d| {
            d.connected = true;
            d.last_seen = Some(now.clone());
            d.agent_version = Some(hello.agent_version.clone());
            d.inventory = Some(inventory_view(&hello.inventory));
            d.deployments = reports.clone();
            Ok(())
        })?;
        self.emit(
            "device.online",
            &format!("device/{id}"),
            id,
            serde_json::json!({"agent_version": hello.agent_version}),
        );
        Ok(())
    }

    /// A status frame: stored (keeping at most `max_deployments` deployments)
    /// and announced when it differs from the one stored. Returns whether it did.
    pub fn record_status(
        &self,
        id: &str,
        status: &DeploymentStatus,
        max_deployments: usize,
    ) -> Result<bool, RegistryError> {
        let now = crate::now().to_string();
        let report = deployment_report(status, &now);
        let mut changed = false;
        self.touch(id, &mut |d| {
            d.last_seen = Some(now.clone());
            match d
                .deployments
                .binary_search_by(|r| key(r).cmp(&key(&report)))
            {
                Ok(i) => {
                    changed = !same_report(&d.deployments[i], &report);
                    d.deployments[i] = report.clone();
                }
                Err(_) if d.deployments.len() >= max_deployments => {
                    return Err(StoreError::Rejected(format!(
                        "device {id} reports more than {max_deployments} deployments"
                    )));
                }
                Err(i) => {
                    changed = true;
                    d.deployments.insert(i, report.clone());
                }
            }
            Ok(())
        })?;
        if changed {
            if let Some(kind) = deployment_event(&status.state) {
                self.emit(
                    kind,
                    &format!("device/{id}/{}/{}", status.endpoint, status.deployment),
                    id,
                    serde_json::to_value(&report).unwrap_or_default(),
                );
            }
        }
        Ok(changed)
    }

    /// The device is still there (a ping, a request): refreshes `last_seen`.
    pub fn record_seen(&self, id: &str) -> Result<(), RegistryError> {
        let now = crate::now().to_string();
        self.touch(id, &mut |d| {
            d.last_seen = Some(now.clone());
            Ok(())
        })?;
        Ok(())
    }

    /// The device's connection ended.
    pub fn record_disconnect(&self, id: &str) -> Result<(), RegistryError> {
        let now = crate::now().to_string();
        self.touch(id, &mut |d| {
            d.connected = false;
            d.last_seen = Some(now.clone());
            Ok(())
        })?;
        self.emit(
            "device.offline",
            &format!("device/{id}"),
            id,
            serde_json::Value::Null,
        );
        Ok(())
    }

    /// At start no device is connected, whatever a crash left stored.
    pub fn mark_all_offline(&self) -> Result<usize, RegistryError> {
        let mut n = 0;
        for d in self.devices()?.into_iter().filter(|d| d.connected) {
            self.touch(&d.id, &mut |d| {
                d.connected = false;
                Ok(())
            })?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::time::UtcTime;

    fn status(state: DeploymentState) -> DeploymentStatus {
        DeploymentStatus {
            endpoint: "fraud".into(),
            deployment: "blue".into(),
            target: "models/fraud/1/manifest.cbor".into(),
            state,
            active: None,
            director_version: 3,
            since: UtcTime(1_800_000_000),
        }
    }

    #[test]
    fn reports_name_the_state_and_its_details() {
        let r = deployment_report(
            &status(DeploymentState::Fetching { have: 5, need: 9 }),
            "now",
        );
        assert_eq!(
            (r.state.as_str(), r.have_bytes, r.need_bytes),
            ("fetching", Some(5), Some(9))
        );
        let r = deployment_report(
            &status(DeploymentState::RolledBack {
                reason: "trial failed".into(),
            }),
            "now",
        );
        assert_eq!(r.state, "rolled_back");
        assert_eq!(r.reason.as_deref(), Some("trial failed"));
        assert_eq!(r.since, "2027-01-15T08:00:00Z");
    }

    #[test]
    fn only_final_states_raise_deployment_events() {
        assert_eq!(
            deployment_event(&DeploymentState::Active),
            Some("deployment.activated")
        );
        assert_eq!(deployment_event(&DeploymentState::Trial), None);
        let a = deployment_report(&status(DeploymentState::Active), "t1");
        let b = deployment_report(&status(DeploymentState::Active), "t2");
        assert!(same_report(&a, &b), "a resent report is not a change");
    }
}
