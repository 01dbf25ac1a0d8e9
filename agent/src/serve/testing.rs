//! Helpers for the serving unit tests: director endpoints and small loaded MLPs.

use std::sync::Arc;

use flotilla_protocol::director::{DeploymentAssignment, EndpointAssignment, MirrorAssignment};

use super::local::load_onnx_file;
use crate::slots::LoadedModel;

/// Input width of the test MLPs.
pub(crate) const WIDTH: usize = 4;

/// An endpoint with `(deployment, weight)` pairs.
pub(crate) fn endpoint(
    name: &str,
    deployments: &[(&str, u32)],
    mirror: Option<MirrorAssignment>,
) -> EndpointAssignment {
    EndpointAssignment {
        name: name.to_owned(),
        deployments: deployments
            .iter()
            .map(|(d, w)| DeploymentAssignment {
                name: (*d).to_owned(),
                target: format!("models/{name}/1/manifest.cbor"),
                length: 0,
                sha256: String::new(),
                weight: *w,
            })
            .collect(),
        mirror,
    }
}

/// An MLP `[4, 8, 3]` from `seed`, loaded.
pub(crate) fn loaded_seed(seed: u64) -> Arc<LoadedModel> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp.onnx");
    std::fs::write(&path, flotilla_runtime::generate::mlp(&[WIDTH, 8, 3], seed)).unwrap();
    load_onnx_file(&path, None).unwrap().model
}

/// The MLP of seed 1.
pub(crate) fn loaded() -> Arc<LoadedModel> {
    loaded_seed(1)
}
