//! Dynamic batching per deployment version: requests whose inputs share a
//! leading batch dim and arrive within `batch_window` of the first are
//! concatenated along dim 0 (up to `max_batch` rows), run once, and the outputs
//! split back by rows.
//!
//! Design: one [`Batcher`] task per loaded model, fed through a bounded channel.
//! It collects a batch (the first request opens the window; a request that does
//! not fit, by rows or by trailing dims, starts the next batch), then waits for
//! an execution permit and hands the batch to a blocking thread, so batches of
//! one deployment can run side by side up to `max_concurrency`. Requests wait
//! in the batch holding a queue slot, so `max_queue` bounds them too. If the
//! batched run fails, or an output's leading dim is not the batch's row count,
//! each request is run on its own, so a batch never changes an answer. A request
//! whose caller has gone (timeout, disconnect) is dropped before the run.
//! The task ends when the model is swapped out and its last request is done.
//!
//! It does not decide whether a model batches (that is [`super::active`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::admission::{Admission, QueueSlot};
use super::error::ServeError;
use super::exec::run_blocking;
use super::metrics::Series;
use super::tensors::NamedTensor;
use crate::slots::LoadedModel;

type Reply = oneshot::Sender<Result<Vec<NamedTensor>, ServeError>>;

/// One request waiting in a batch.
#[derive(Debug)]
struct Job {
    inputs: Vec<NamedTensor>,
    // invariant: every input's shape[0] == rows.
    rows: usize,
    reply: Reply,
    slot: Option<QueueSlot>,
}

/// Batching parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchParams {
    pub(crate) window: Duration,
    pub(crate) max_batch: usize,
    /// Channel capacity (the queue bound already limits what waits).
    pub(crate) capacity: usize,
}

/// The sending side of one model's batcher.
#[derive(Debug)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the batcher task for `model` on the current tokio runtime.
    pub(crate) fn start(
        model: Arc<LoadedModel>,
        admission: Arc<Admission>,
        series: Arc<Series>,
        params: BatchParams,
    ) -> Self {
        let (tx, rx) = mpsc::channel(params.capacity.max(1));
        tokio::spawn(collect(rx, model, admission, series, params));
        Self { tx }
    }

    /// Runs `inputs` (validated, `rows` along dim 0) in the next batch.
    ///
    /// # Errors
    ///
    /// [`ServeError::Overloaded`] if the channel is full, else the run's error.
    pub(crate) async fn submit(
        &self,
        inputs: Vec<NamedTensor>,
        rows: usize,
        slot: QueueSlot,
    ) -> Result<Vec<NamedTensor>, ServeError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs,
            rows,
            reply,
            slot: Some(slot),
        };
        self.tx.try_send(job).map_err(|_| ServeError::Overloaded)?;
        answer
            .await
            .map_err(|_| ServeError::Execution("the batched run was abandoned".to_owned()))?
    }
}

/// The common leading dim of `inputs`, when every input has one.
pub(crate) fn batch_rows(inputs: &[NamedTensor]) -> Option<usize> {
    let first = *inputs.first()?.data.shape.first()?;
    inputs
        .iter()
        .all(|i| i.data.shape.first() == Some(&first))
        .then_some(first)
}

/// True when `b` can join a batch opened by `a`: same inputs, datatypes and
/// trailing dims.
fn compatible(a: &[NamedTensor], b: &[NamedTensor]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name
                && x.data.datatype == y.data.datatype
                && x.data.shape.get(1..) == y.data.shape.get(1..)
        })
}

async fn collect(
    mut rx: mpsc::Receiver<Job>,
    model: Arc<LoadedModel>,
    admission: Arc<Admission>,
    series: Arc<Series>,
    params: BatchParams,
) {
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let deadline = Instant::now() + params.window;
        let mut rows = first.rows;
        let mut jobs = vec![first];
        while rows < params.max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(j)) => {
                    if rows + j.rows <= params.max_batch && compatible(&jobs[0].inputs, &j.inputs) {
                        rows += j.rows;
                        jobs.push(j);
                    } else {
                        carry = Some(j);
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        let Ok(permit) = admission.permit().await else {
            return;
        };
        // Callers that gave up meanwhile are not run.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        for j in &mut jobs {
            j.slot = None;
        }
        series.record_batch(jobs.len());
        let running = series.running();
        let model = Arc::clone(&model);
        // Not awaited: the next batch is collected while this one runs.
        drop(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _running = running;
            run_batch(&model, jobs);
        }));
    }
}

/// Runs `jobs` as one batch and answers each; falls back to one run per job.
fn run_batch(model: &LoadedModel, mut jobs: Vec<Job>) {
    if jobs.len() > 1 {
        let total: usize = jobs.iter().map(|j| j.rows).sum();
        let mut merged = jobs[0].inputs.clone();
        for (i, input) in merged.iter_mut().enumerate() {
            if let Some(d) = input.data.shape.first_mut() {
                *d = total;
            }
            for job in &jobs[1..] {
                input.data.values.extend_from(&job.inputs[i].data.values);
            }
        }
        if let Ok(outputs) = run_blocking(model, merged) {
            if let Some(parts) = split(&outputs, &jobs, total) {
                for (job, part) in jobs.into_iter().zip(parts) {
                    let _ = job.reply.send(Ok(part));
                }
                return;
            }
        }
    }
    for job in jobs.drain(..) {
        let result = run_blocking(model, job.inputs).map_err(ServeError::Execution);
        let _ = job.reply.send(result);
    }
}

/// Splits batched `outputs` back per job by rows; `None` when an output's
/// leading dim is not `total`.
fn split(outputs: &[NamedTensor], jobs: &[Job], total: usize) -> Option<Vec<Vec<NamedTensor>>> {
    let mut parts: Vec<Vec<NamedTensor>> = jobs.iter().map(|_| Vec::new()).collect();
    for out in outputs {
        if out.data.shape.first() != Some(&total) || total == 0 {
            return None;
        }
        let row_len = out.data.values.len() / total;
        let mut row = 0;
        for (job, part) in jobs.iter().zip(&mut parts) {
            let mut shape = out.data.shape.clone();
            shape[0] = job.rows;
            let values = out
                .data
                .values
                .slice(row * row_len, (row + job.rows) * row_len);
            row += job.rows;
            part.push(NamedTensor {
                name: out.name.clone(),
                data: super::tensors::TensorData {
                    datatype: out.data.datatype,
                    shape,
                    values,
                },
            });
        }
    }
    Some(parts)
}
