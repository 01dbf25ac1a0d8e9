//! [`ActiveModel`]: one deployment's loaded model version as serving sees it:
//! the model, its TUF target, the version label clients use in
//! `/versions/{version}`, and its batcher once the first request starts it.
//!
//! In-flight requests hold an `Arc<ActiveModel>`, so a version swapped out
//! stays alive (and its batcher keeps running) until its last request is done.

use std::sync::{Arc, OnceLock};

use flotilla_protocol::manifest::Dim;

use super::batch::Batcher;
use super::drift::DriftRecorder;
use crate::slots::LoadedModel;

/// A model version a deployment serves.
#[derive(Debug)]
pub(crate) struct ActiveModel {
    /// The TUF target path of its manifest (`models/NAME/V/manifest.cbor`).
    pub(crate) target: String,
    /// `V` from the target path, else the deployment name.
    pub(crate) version: String,
    pub(crate) model: Arc<LoadedModel>,
    /// Every input has rank >= 1 and a leading dim that is not fixed.
    pub(crate) batchable: bool,
    pub(crate) batcher: OnceLock<Batcher>,
    /// Drift counters, when the bundle has a baseline that maps to its tensors.
    pub(crate) drift: Option<DriftRecorder>,
}

impl ActiveModel {
    pub(crate) fn new(target: &str, deployment: &str, model: Arc<LoadedModel>) -> Self {
        let inputs = &model.signature().inputs;
        let batchable = !inputs.is_empty()
            && inputs.iter().all(|s| {
                s.shape
                    .as_ref()
                    .and_then(|d| d.first())
                    .is_some_and(|d| !matches!(d, Dim::Fixed(_)))
            });
        let drift = model
            .drift_baseline()
            .and_then(|b| DriftRecorder::new(target, b, model.signature()));
        Self {
            drift,
            target: target.to_owned(),
            version: version_label(target).unwrap_or_else(|| deployment.to_owned()),
            model,
            batchable,
            batcher: OnceLock::new(),
        }
    }
}

/// `V` of a target path `models/NAME/V/manifest.cbor`, when `V` is a number.
pub(crate) fn version_label(target: &str) -> Option<String> {
    let rest = target
        .strip_prefix("models/")?
        .strip_suffix("/manifest.cbor")?;
    let (_, v) = rest.rsplit_once('/')?;
    (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())).then(|| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_label_is_the_number_in_the_target_path() {
        assert_eq!(
            version_label("models/fraud/12/manifest.cbor").as_deref(),
            Some("12")
        );
        assert_eq!(version_label("local:/tmp/m.onnx"), None);
        assert_eq!(version_label("models/fraud/x/manifest.cbor"), None);
    }
}
