//! Running a loaded model on validated inputs: [`run_blocking`] on the calling
//! thread, [`run_direct`] on tokio's blocking pool holding an execution permit.
//!
//! It does not validate inputs or queue requests (that is
//! [`super::validate`] and [`super::admission`]).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use super::error::ServeError;
use super::metrics::Series;
use super::tensors::{NamedTensor, TensorData};
use crate::slots::LoadedModel;

/// Runs `model` once on `inputs`; returns the outputs in graph order.
///
/// # Errors
///
/// A one-line reason: an input the runtime cannot build, a run error, an output
/// the protocol cannot carry.
pub(crate) fn run_blocking(
    model: &LoadedModel,
    inputs: Vec<NamedTensor>,
) -> Result<Vec<NamedTensor>, String> {
    let mut feed = HashMap::with_capacity(inputs.len());
    for input in inputs {
        let t = input
            .data
            .into_tensor()
            .map_err(|e| format!("input {:?}: {e}", input.name))?;
        feed.insert(input.name, t);
    }
    let mut outs = model
        .model()
        .run(feed)
        .map_err(|e| format!("model run failed: {e}"))?;
    let mut result = Vec::with_capacity(outs.len());
    for spec in model.model().outputs() {
        if let Some(t) = outs.remove(&spec.name) {
            let data =
                TensorData::from_tensor(&t).map_err(|e| format!("output {:?}: {e}", spec.name))?;
            result.push(NamedTensor {
                name: spec.name.clone(),
                data,
            });
        }
    }
    Ok(result)
}

/// Runs `model` on a blocking thread that holds `permit` (and counts as in
/// flight on `series`) until the run ends, even if this future is dropped.
///
/// # Errors
///
/// [`ServeError::Execution`] with the run's reason, or if the run panicked.
pub(crate) async fn run_direct(
    model: Arc<LoadedModel>,
    inputs: Vec<NamedTensor>,
    permit: OwnedSemaphorePermit,
    series: &Arc<Series>,
) -> Result<Vec<NamedTensor>, ServeError> {
    let running = series.running();
    series.record_batch(1);
    let handle = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let _running = running;
        run_blocking(&model, inputs)
    });
    match handle.await {
        Ok(result) => result.map_err(ServeError::Execution),
        Err(e) => Err(ServeError::Execution(format!("the model run failed: {e}"))),
    }
}
