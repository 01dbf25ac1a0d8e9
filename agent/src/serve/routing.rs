//! The routing table: for each endpoint, its deployments with their weights and
//! loaded models, the traffic split over those that can serve, and the mirror;
//! and the choice of a deployment for one request (version in the path, pin
//! header, sticky session key, or a weighted random draw).
//!
//! Design: a [`Table`] is immutable. [`super::Serving`] rebuilds it whenever
//! routes or models change and swaps it in whole; a request takes an `Arc` of
//! the table once and routes on that snapshot, so a concurrent change never
//! fails or drops it. A deployment named in the director document but with no
//! model loaded yet takes no traffic: the split is over deployments that can
//! serve, so a canary that is still staging does not fail requests.
//!
//! It does no I/O and reads no clock; randomness comes in as draws.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flotilla_protocol::director::EndpointAssignment;
use flotilla_protocol::reconcile::DeploymentKey;

use super::active::ActiveModel;
use super::error::ServeError;
use super::metrics::{Metrics, Series};

/// Deployments chosen in proportion to their weights.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrafficSplit {
    /// (cumulative weight at the end of the entry, deployment index).
    // invariant: ends strictly increase; the last end is `total`.
    entries: Vec<(u64, usize)>,
    total: u64,
}

impl TrafficSplit {
    /// A split over `(index, weight)`; zero weights take no traffic.
    pub(crate) fn new(weights: impl IntoIterator<Item = (usize, u32)>) -> Self {
        let mut total = 0u64;
        let mut entries = Vec::new();
        for (index, w) in weights {
            if w > 0 {
                total += u64::from(w);
                entries.push((total, index));
            }
        }
        Self { entries, total }
    }

    /// The deployment a uniform 64-bit `draw` lands on; `None` when no weight.
    pub(crate) fn pick(&self, draw: u64) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        // Multiply-shift: maps the draw onto [0, total) without modulo bias.
        let point = ((u128::from(draw) * u128::from(self.total)) >> 64) as u64;
        let i = self.entries.partition_point(|(end, _)| *end <= point);
        self.entries.get(i).map(|(_, index)| *index)
    }
}

/// Uniform 64-bit draws: splitmix64 over a counter with a random start.
#[derive(Debug)]
pub(crate) struct Draws {
    state: AtomicU64,
}

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

impl Draws {
    /// Seeded from the process's hash keys and the clock.
    pub(crate) fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        Self::seeded(h.finish())
    }

    /// A fixed sequence, for tests.
    pub(crate) fn seeded(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    /// The next draw.
    pub(crate) fn next(&self) -> u64 {
        mix(self
            .state
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA))
    }
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The draw a session key always maps to: FNV-1a, then mixed so that the high
/// bits the split reads are uniform. Stable across processes and builds.
pub(crate) fn session_draw(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// True when a uniform `draw` falls in the first `percent` of the range.
pub(crate) fn within_percent(draw: u64, percent: u32) -> bool {
    ((u128::from(draw) * 100) >> 64) < u128::from(percent)
}

/// One deployment of an endpoint.
#[derive(Debug)]
pub(crate) struct DeploymentRoute {
    pub(crate) name: String,
    pub(crate) weight: u32,
    /// `None` while nothing is loaded for it.
    pub(crate) active: Option<Arc<ActiveModel>>,
    pub(crate) series: Arc<Series>,
    pub(crate) mirror_series: Arc<Series>,
}

/// One endpoint's routes.
#[derive(Debug)]
pub(crate) struct EndpointRoute {
    pub(crate) name: String,
    pub(crate) deployments: Vec<DeploymentRoute>,
    /// Over deployments with a model and a weight.
    split: TrafficSplit,
    /// (deployment index, percent).
    mirror: Option<(usize, u32)>,
    /// For requests that fail before a deployment is chosen (deployment label
    /// empty).
    pub(crate) unrouted: Arc<Series>,
}

/// What a request asks of the router.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RouteHints<'a> {
    /// `/versions/{version}`: a version number or a deployment name.
    pub(crate) version: Option<&'a str>,
    /// `x-flotilla-deployment`.
    pub(crate) pin: Option<&'a str>,
    /// `x-flotilla-session`.
    pub(crate) session: Option<&'a str>,
}

/// Where a mirrored copy goes.
#[derive(Debug, Clone)]
pub(crate) struct MirrorTarget {
    pub(crate) active: Arc<ActiveModel>,
    pub(crate) series: Arc<Series>,
}

/// The deployment chosen for one request.
#[derive(Debug, Clone)]
pub(crate) struct Routed {
    pub(crate) endpoint: String,
    pub(crate) deployment: String,
    pub(crate) active: Arc<ActiveModel>,
    pub(crate) series: Arc<Series>,
    pub(crate) mirror: Option<MirrorTarget>,
}

impl EndpointRoute {
    /// The routes of `assign` over the models in `active`.
    pub(crate) fn build(
        assign: &EndpointAssignment,
        active: &HashMap<DeploymentKey, Arc<ActiveModel>>,
        metrics: &Metrics,
    ) -> Self {
        let endpoint = &assign.name;
        let deployments: Vec<DeploymentRoute> = assign
            .deployments
            .iter()
            .map(|d| DeploymentRoute {
                name: d.name.clone(),
                weight: d.weight,
                active: active.get(&DeploymentKey::new(endpoint, &d.name)).cloned(),
                series: metrics.series(endpoint, &d.name, false),
                mirror_series: metrics.series(endpoint, &d.name, true),
            })
            .collect();
        let split = TrafficSplit::new(
            deployments
                .iter()
                .enumerate()
                .filter(|(_, d)| d.active.is_some())
                .map(|(i, d)| (i, d.weight)),
        );
        let mirror = assign.mirror.as_ref().and_then(|m| {
            let i = deployments.iter().position(|d| d.name == m.deployment)?;
            Some((i, m.percent.min(100)))
        });
        Self {
            name: endpoint.clone(),
            deployments,
            split,
            mirror,
            unrouted: metrics.series(endpoint, "", false),
        }
    }

    /// Every deployment has a model (and there is at least one).
    pub(crate) fn ready(&self) -> bool {
        !self.deployments.is_empty() && self.deployments.iter().all(|d| d.active.is_some())
    }

    /// Chooses the deployment for a request; `draw` gives uniform draws.
    ///
    /// # Errors
    ///
    /// [`ServeError::UnknownDeployment`] for a pin or version the endpoint does
    /// not have, [`ServeError::NotReady`] when the choice has no model.
    pub(crate) fn route(
        &self,
        hints: &RouteHints<'_>,
        draw: &mut dyn FnMut() -> u64,
    ) -> Result<Routed, ServeError> {
        let index = self.choose(hints, draw)?;
        let d = &self.deployments[index];
        let active = d.active.clone().ok_or_else(|| {
            ServeError::NotReady(format!(
                "deployment {:?} of model {:?} has no model loaded yet",
                d.name, self.name
            ))
        })?;
        let mirror = match self.mirror {
            Some((m, percent)) if m != index && within_percent(draw(), percent) => {
                let md = &self.deployments[m];
                md.active.clone().map(|active| MirrorTarget {
                    active,
                    series: Arc::clone(&md.mirror_series),
                })
            }
            _ => None,
        };
        Ok(Routed {
            endpoint: self.name.clone(),
            deployment: d.name.clone(),
            active,
            series: Arc::clone(&d.series),
            mirror,
        })
    }

    fn choose(
        &self,
        hints: &RouteHints<'_>,
        draw: &mut dyn FnMut() -> u64,
    ) -> Result<usize, ServeError> {
        let mut draw_for_request = || hints.session.map_or_else(&mut *draw, session_draw);
        if let Some(pin) = hints.pin {
            let i = self
                .deployments
                .iter()
                .position(|d| d.name == pin)
                .ok_or_else(|| {
                    ServeError::UnknownDeployment(format!(
                        "model {:?} has no deployment {pin:?}; it has {:?}",
                        self.name,
                        self.deployment_names()
                    ))
                })?;
            if let Some(v) = hints.version {
                if !self.serves_version(i, v) {
                    return Err(ServeError::UnknownDeployment(format!(
                        "deployment {pin:?} of model {:?} does not serve version {v:?}",
                        self.name
                    )));
                }
            }
            return Ok(i);
        }
        if let Some(v) = hints.version {
            let matching: Vec<usize> = (0..self.deployments.len())
                .filter(|i| self.serves_version(*i, v))
                .collect();
            if matching.is_empty() {
                return Err(ServeError::UnknownDeployment(format!(
                    "model {:?} has no version {v:?}; it has {:?}",
                    self.name,
                    self.versions()
                )));
            }
            let ready = |i: &&usize| self.deployments[**i].active.is_some();
            let split = TrafficSplit::new(
                matching
                    .iter()
                    .filter(ready)
                    .map(|i| (*i, self.deployments[*i].weight)),
            );
            return Ok(split
                .pick(draw_for_request())
                .or_else(|| matching.iter().find(ready).copied())
                .unwrap_or(matching[0]));
        }
        self.split.pick(draw_for_request()).ok_or_else(|| {
            ServeError::NotReady(format!(
                "model {:?} has no deployment with a model and a traffic weight",
                self.name
            ))
        })
    }

    /// Deployment `i` is named `v` or serves version `v`.
    fn serves_version(&self, i: usize, v: &str) -> bool {
        let d = &self.deployments[i];
        d.name == v || d.active.as_ref().is_some_and(|a| a.version == v)
    }

    fn deployment_names(&self) -> Vec<&str> {
        self.deployments.iter().map(|d| d.name.as_str()).collect()
    }

    /// The version labels loaded, sorted and unique.
    pub(crate) fn versions(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .deployments
            .iter()
            .filter_map(|d| d.active.as_ref().map(|a| a.version.clone()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The model whose metadata `GET /v2/models/{name}[/versions/{v}]` shows:
    /// for a version, the first deployment serving it; else the loaded
    /// deployment with the largest weight.
    ///
    /// # Errors
    ///
    /// As [`EndpointRoute::route`].
    pub(crate) fn metadata_model(
        &self,
        version: Option<&str>,
    ) -> Result<&Arc<ActiveModel>, ServeError> {
        let loaded = self
            .deployments
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.active.as_ref().map(|a| (i, d.weight, a)));
        let found = match version {
            Some(v) => loaded
                .filter(|(i, _, _)| self.serves_version(*i, v))
                .map(|(_, _, a)| a)
                .next(),
            None => loaded
                .max_by_key(|(i, w, _)| (*w, std::cmp::Reverse(*i)))
                .map(|(_, _, a)| a),
        };
        found.ok_or_else(|| match version {
            Some(v) if !(0..self.deployments.len()).any(|i| self.serves_version(i, v)) => {
                ServeError::UnknownDeployment(format!(
                    "model {:?} has no version {v:?}; it has {:?}",
                    self.name,
                    self.versions()
                ))
            }
            _ => ServeError::NotReady(format!("model {:?} has no model loaded yet", self.name)),
        })
    }

    /// Ready for `version` (or, without one, [`EndpointRoute::ready`]).
    pub(crate) fn ready_for(&self, version: Option<&str>) -> bool {
        match version {
            None => self.ready(),
            Some(v) => (0..self.deployments.len())
                .any(|i| self.serves_version(i, v) && self.deployments[i].active.is_some()),
        }
    }
}

/// Every endpoint's routes at one instant.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub(crate) endpoints: BTreeMap<String, Arc<EndpointRoute>>,
}

impl Table {
    /// Builds the table of `routes` over `active`.
    pub(crate) fn build(
        routes: &[EndpointAssignment],
        active: &HashMap<DeploymentKey, Arc<ActiveModel>>,
        metrics: &Metrics,
    ) -> Self {
        let endpoints = routes
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    Arc::new(EndpointRoute::build(e, active, metrics)),
                )
            })
            .collect();
        Self { endpoints }
    }

    /// Every routed deployment has a model.
    pub(crate) fn ready(&self) -> bool {
        self.endpoints.values().all(|e| e.ready())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::testing::{endpoint, loaded};
    use flotilla_protocol::director::MirrorAssignment;

    fn table(assign: &EndpointAssignment, ready: &[&str]) -> EndpointRoute {
        let model = loaded();
        let active = ready
            .iter()
            .map(|d| {
                (
                    DeploymentKey::new(&assign.name, d),
                    Arc::new(ActiveModel::new(
                        &format!("models/m/{}/manifest.cbor", d.len()),
                        d,
                        Arc::clone(&model),
                    )),
                )
            })
            .collect();
        EndpointRoute::build(assign, &active, &Metrics::default())
    }

    fn route(
        e: &EndpointRoute,
        hints: RouteHints<'_>,
        draws: &Draws,
    ) -> Result<String, ServeError> {
        e.route(&hints, &mut || draws.next()).map(|r| r.deployment)
    }

    #[test]
    fn ten_thousand_draws_over_a_90_10_split_land_within_tolerance() {
        let e = table(
            &endpoint("m", &[("blue", 90), ("green", 10)], None),
            &["blue", "green"],
        );
        let draws = Draws::new();
        let blue = (0..10_000)
            .filter(|_| route(&e, RouteHints::default(), &draws).unwrap() == "blue")
            .count();
        // sigma = sqrt(10000 * 0.9 * 0.1) = 30; 300 is ten sigma.
        assert!((8_700..=9_300).contains(&blue), "blue got {blue}");
    }

    #[test]
    fn sticky_keys_always_map_to_the_same_deployment_and_follow_the_weights() {
        let e = table(
            &endpoint("m", &[("blue", 70), ("green", 30)], None),
            &["blue", "green"],
        );
        let draws = Draws::seeded(7);
        let mut blue = 0;
        for k in 0..2_000 {
            let key = format!("user-{k}");
            let hints = RouteHints {
                session: Some(&key),
                ..RouteHints::default()
            };
            let first = route(&e, hints, &draws).unwrap();
            for _ in 0..5 {
                assert_eq!(route(&e, hints, &draws).unwrap(), first, "key {key}");
            }
            blue += usize::from(first == "blue");
        }
        assert!((1_250..=1_550).contains(&blue), "blue got {blue} of 2000");
    }

    #[test]
    fn the_pin_header_picks_the_deployment_and_an_unknown_pin_is_404() {
        let e = table(
            &endpoint("m", &[("blue", 100), ("green", 0)], None),
            &["blue", "green"],
        );
        let draws = Draws::seeded(1);
        let pin = |p| RouteHints {
            pin: Some(p),
            ..RouteHints::default()
        };
        for _ in 0..100 {
            assert_eq!(route(&e, pin("green"), &draws).unwrap(), "green");
        }
        let err = route(&e, pin("red"), &draws).unwrap_err();
        assert_eq!(err.status(), 404);
        assert!(err.to_string().contains("no deployment \"red\""), "{err}");
    }

    #[test]
    fn a_deployment_without_a_model_takes_no_traffic() {
        let e = table(
            &endpoint("m", &[("blue", 50), ("green", 50)], None),
            &["blue"],
        );
        let draws = Draws::seeded(3);
        for _ in 0..1_000 {
            assert_eq!(route(&e, RouteHints::default(), &draws).unwrap(), "blue");
        }
        assert!(!e.ready());
        let pinned = RouteHints {
            pin: Some("green"),
            ..RouteHints::default()
        };
        assert_eq!(route(&e, pinned, &draws).unwrap_err().status(), 503);
    }

    #[test]
    fn versions_route_by_number_or_deployment_name() {
        // "blue" serves models/m/4/..., "green" models/m/5/... (name lengths).
        let e = table(
            &endpoint("m", &[("blue", 100), ("green", 0)], None),
            &["blue", "green"],
        );
        let draws = Draws::seeded(5);
        let v = |v| RouteHints {
            version: Some(v),
            ..RouteHints::default()
        };
        assert_eq!(route(&e, v("5"), &draws).unwrap(), "green");
        assert_eq!(route(&e, v("blue"), &draws).unwrap(), "blue");
        assert_eq!(route(&e, v("9"), &draws).unwrap_err().status(), 404);
        assert_eq!(e.versions(), vec!["4".to_owned(), "5".to_owned()]);
    }

    #[test]
    fn the_mirror_copies_its_percent_and_never_mirrors_onto_itself() {
        let mirror = MirrorAssignment {
            deployment: "shadow".into(),
            percent: 25,
        };
        let e = table(
            &endpoint("m", &[("live", 100), ("shadow", 0)], Some(mirror)),
            &["live", "shadow"],
        );
        let draws = Draws::seeded(11);
        let mut mirrored = 0;
        for _ in 0..4_000 {
            let r = e
                .route(&RouteHints::default(), &mut || draws.next())
                .unwrap();
            assert_eq!(r.deployment, "live");
            mirrored += usize::from(r.mirror.is_some());
        }
        assert!(
            (850..=1_150).contains(&mirrored),
            "mirrored {mirrored} of 4000"
        );
        let pinned = RouteHints {
            pin: Some("shadow"),
            ..RouteHints::default()
        };
        for _ in 0..100 {
            let r = e.route(&pinned, &mut || draws.next()).unwrap();
            assert!(r.mirror.is_none());
        }
    }

    #[test]
    fn a_split_maps_the_draw_range_onto_the_weights_in_order() {
        let s = TrafficSplit::new([(0, 1), (1, 0), (2, 3)]);
        assert_eq!(s.pick(0), Some(0));
        assert_eq!(s.pick(u64::MAX / 4 - 1), Some(0));
        assert_eq!(s.pick(u64::MAX / 4 + 1), Some(2));
        assert_eq!(s.pick(u64::MAX), Some(2));
        assert_eq!(TrafficSplit::new([(0, 0)]).pick(5), None);
    }
}
