//! One inference request end to end: route on the current table, read the body,
//! decode and validate it, wait for an execution (or a batch), run, copy to the
//! mirror, encode, and record the outcome in the deployment's metrics.
//!
//! `request_timeout` bounds everything from the body's arrival up to the
//! encoded answer (504 past it), so that a 504 reaches a client that sent its
//! body. The body itself may take `request_timeout`, but at least
//! [`MIN_BODY_TIMEOUT`] (408 past it): a tight scoring budget must not refuse a
//! large body on a slow link.
//!
//! The HTTP layer only extracts headers and the body stream and turns an
//! [`Answer`] into a response; everything that decides the answer is here, so
//! that tests can drive it without sockets.
//!
//! A request whose future is dropped (the client went away) is recorded as
//! `499 cancelled`; what it holds (queue slot, permit, model version) is
//! released by drop, and a run already started finishes on its thread.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batch::{batch_rows, BatchParams, Batcher};
use super::error::ServeError;
use super::exec;
use super::metrics::Series;
use super::routing::{MirrorTarget, RouteHints, Routed};
use super::tensors::NamedTensor;
use super::validate::check_inputs;
use super::wire::{self, EncodedResponse};
use super::Serving;

/// The least time a request body is given to arrive.
pub(crate) const MIN_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request asks for, from its path and headers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct InferCall<'a> {
    /// The endpoint (the model name in the path).
    pub(crate) model: &'a str,
    pub(crate) version: Option<&'a str>,
    /// `x-flotilla-deployment`.
    pub(crate) pin: Option<&'a str>,
    /// `x-flotilla-session`.
    pub(crate) session: Option<&'a str>,
    /// `Inference-Header-Content-Length`.
    pub(crate) header_len: Option<&'a str>,
}

/// The answer to one request.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// (deployment, target) that served it, once routed.
    pub(crate) served_by: Option<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// Set when binary outputs follow `body[..json_len]`.
    pub(crate) json_len: Option<usize>,
}

impl Answer {
    /// `{"error": "..."}` with the error's status.
    pub(crate) fn error(e: &ServeError, served_by: Option<(String, String)>) -> Self {
        let body = serde_json::to_vec(&serde_json::json!({ "error": e.to_string() }))
            .unwrap_or_else(|_| b"{\"error\":\"\"}".to_vec());
        Self {
            status: e.status(),
            served_by,
            body,
            json_len: None,
        }
    }
}

/// Records a request whose future was dropped before it was answered.
struct Pending<'a> {
    series: &'a Series,
    started: Instant,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.series
                .record(499, Some("cancelled"), self.started.elapsed());
        }
    }
}

impl Serving {
    /// Answers one inference request whose body `body` yields.
    pub(crate) async fn infer<B>(self: &Arc<Self>, call: InferCall<'_>, body: B) -> Answer
    where
        B: Future<Output = Result<Vec<u8>, ServeError>>,
    {
        let started = Instant::now();
        let routed = {
            let table = self.table();
            let Some(endpoint) = table.endpoints.get(call.model) else {
                self.metrics.unknown_model();
                return Answer::error(&ServeError::UnknownModel(call.model.to_owned()), None);
            };
            let hints = RouteHints {
                version: call.version,
                pin: call.pin,
                session: call.session,
            };
            match endpoint.route(&hints, &mut || self.draws.next()) {
                Ok(r) => r,
                Err(e) => {
                    endpoint
                        .unrouted
                        .record(e.status(), Some(e.kind()), started.elapsed());
                    return Answer::error(&e, None);
                }
            }
        };
        let mut pending = Pending {
            series: &routed.series,
            started,
            answered: false,
        };
        let served_by = Some((routed.deployment.clone(), routed.active.target.clone()));
        let timeout = self.config.request_timeout;
        let body_timeout = timeout.max(MIN_BODY_TIMEOUT);
        let result = match tokio::time::timeout(body_timeout, body).await {
            Err(_) => Err(ServeError::BodyTimeout(body_timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(body)) => {
                tokio::time::timeout(timeout, self.score(&routed, call.header_len, body))
                    .await
                    .unwrap_or(Err(ServeError::Timeout(timeout)))
            }
        };
        let (answer, kind) = match result {
            Ok(EncodedResponse { body, json_len }) => {
                let answer = Answer {
                    status: 200,
                    served_by,
                    body,
                    json_len,
                };
                (answer, None)
            }
            Err(e) => {
                if e.status() >= 500 {
                    tracing::warn!(model = call.model, deployment = %routed.deployment, error = %e, "scoring failed");
                }
                (Answer::error(&e, served_by), Some(e.kind()))
            }
        };
        pending.answered = true;
        routed.series.record(answer.status, kind, started.elapsed());
        answer
    }

    async fn score(
        self: &Arc<Self>,
        routed: &Routed,
        header_len: Option<&str>,
        body: Vec<u8>,
    ) -> Result<EncodedResponse, ServeError> {
        let header_len = header_len
            .map(|h| {
                h.trim().parse::<usize>().map_err(|_| {
                    ServeError::Malformed(format!(
                        "Inference-Header-Content-Length {h:?} is not a byte count"
                    ))
                })
            })
            .transpose()?;
        // Refused anyway: skip the decoding. (The body was read first so that
        // the client, still sending, gets the 429 rather than a broken pipe.)
        if self.admission.saturated() {
            return Err(ServeError::Overloaded);
        }
        let mut req = wire::decode_request(&body, header_len)?;
        drop(body);
        let signature = routed.active.model.signature();
        wire::check_outputs(signature, &req)?;
        let inputs = check_inputs(signature, std::mem::take(&mut req.inputs))
            .map_err(ServeError::Invalid)?;
        if let Some(d) = &routed.active.drift {
            d.record_inputs(&inputs);
        }
        let mirror_inputs = routed.mirror.as_ref().map(|_| inputs.clone());
        let outputs = self.execute(routed, inputs).await;
        if let (Some(d), Ok(out)) = (&routed.active.drift, &outputs) {
            d.record_outputs(out);
        }
        if let (Some(target), Some(inputs)) = (routed.mirror.clone(), mirror_inputs) {
            // After the primary run, off the response path.
            tokio::spawn(Arc::clone(self).mirror(target, inputs));
        }
        wire::encode_response(&routed.endpoint, &routed.active.version, &req, &outputs?)
    }

    /// Runs validated inputs on the routed model, batched when configured.
    async fn execute(
        &self,
        routed: &Routed,
        inputs: Vec<NamedTensor>,
    ) -> Result<Vec<NamedTensor>, ServeError> {
        let active = &routed.active;
        if let Some(window) = self.config.batch_window {
            let rows = batch_rows(&inputs).filter(|r| *r <= self.config.max_batch);
            if let (true, Some(rows)) = (active.batchable, rows) {
                let batcher = active.batcher.get_or_init(|| {
                    Batcher::start(
                        Arc::clone(&active.model),
                        Arc::clone(&self.admission),
                        Arc::clone(&routed.series),
                        BatchParams {
                            window,
                            max_batch: self.config.max_batch,
                            capacity: self.config.max_queue,
                        },
                    )
                });
                let slot = self.admission.reserve(&routed.series)?;
                return batcher.submit(inputs, rows, slot).await;
            }
        }
        let permit = self.admission.enter(&routed.series)?.permit().await?;
        exec::run_direct(Arc::clone(&active.model), inputs, permit, &routed.series).await
    }

    /// Runs a mirrored copy and records its outcome; never waits for a permit.
    async fn mirror(self: Arc<Self>, target: MirrorTarget, inputs: Vec<NamedTensor>) {
        let started = Instant::now();
        let series = &target.series;
        let inputs = match check_inputs(target.active.model.signature(), inputs) {
            Ok(i) => i,
            Err(e) => {
                let e = ServeError::Invalid(e);
                series.record(e.status(), Some(e.kind()), started.elapsed());
                series.record_mirror("invalid");
                return;
            }
        };
        let Some(permit) = self.admission.try_permit() else {
            series.record_mirror("dropped");
            return;
        };
        let model = Arc::clone(&target.active.model);
        match exec::run_direct(model, inputs, permit, series).await {
            Ok(_) => {
                series.record(200, None, started.elapsed());
                series.record_mirror("ok");
            }
            Err(e) => {
                series.record(e.status(), Some(e.kind()), started.elapsed());
                series.record_mirror("error");
            }
        }
    }
}
