//! The agent's scoring API as `batch` calls it: the model's metadata
//! (`GET /v2/models/{endpoint}`) and inference (`POST .../infer`) with JSON
//! bodies, retries with backoff, and answers split back into rows.
//!
//! It does not decide what to do with a rejected request (the pipeline retries
//! it row by row) and does not speak the binary tensor extension.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Number, Value};

use super::{BatchError, BatchOptions, Limits};

/// Datatypes whose elements are JSON numbers.
const NUMERIC: [&str; 12] = [
    "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16",
    "FP32", "FP64",
];

/// Longest backoff between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The model input rows are written into, from the model's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInput {
    /// The input's name.
    pub name: String,
    /// Its datatype, as the protocol names it (`FP32`, `INT64`, ...).
    pub datatype: String,
    /// Features per row when the model fixes it.
    pub width: Option<usize>,
    /// The model takes exactly one row per request.
    pub batch_fixed_to_one: bool,
}

/// One row's outputs: each output's name and that row's values, in the order
/// the agent answered.
pub(crate) type RowOutputs = Vec<(Arc<str>, Vec<Value>)>;

/// What the agent made of one request.
#[derive(Debug)]
pub(crate) enum Reply {
    /// Outputs, one entry per row sent.
    Scored(Vec<RowOutputs>),
    /// A 4xx (other than 404, 408, 429): the request's rows cannot be scored
    /// as sent; the agent's message.
    Rejected(String),
}

/// Calls one agent's scoring API for one endpoint.
#[derive(Debug)]
pub(crate) struct AgentClient {
    http: ureq::Agent,
    base: String,
    endpoint: String,
    retries: u32,
    backoff: Duration,
    limits: Limits,
}

/// Checks that `url` is a plain `http://` URL.
pub(crate) fn check_agent_url(url: &str) -> Result<(), BatchError> {
    if url.starts_with("https://") {
        return Err(BatchError::Usage(format!(
            "--agent {url}: https is not supported; the scoring API is plain HTTP on the node"
        )));
    }
    match url.strip_prefix("http://") {
        Some(rest) if !rest.is_empty() => Ok(()),
        _ => Err(BatchError::Usage(format!(
            "--agent {url:?} is not an http://HOST:PORT URL"
        ))),
    }
}

impl AgentClient {
    pub(crate) fn new(options: &BatchOptions) -> Self {
        let http = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5).min(options.request_timeout))
            .timeout(options.request_timeout)
            .max_idle_connections_per_host(options.concurrency.max(1) * 2)
            .build();
        Self {
            http,
            base: options.agent.trim_end_matches('/').to_owned(),
            endpoint: options.endpoint.clone(),
            retries: options.retries,
            backoff: options.backoff,
            limits: options.limits,
        }
    }

    fn model_url(&self) -> String {
        format!("{}/v2/models/{}", self.base, path_segment(&self.endpoint))
    }

    /// The model input to fill: `name`, or the model's only input.
    pub(crate) fn model_input(&self, name: Option<&str>) -> Result<ModelInput, BatchError> {
        let url = self.model_url();
        let never = AtomicBool::new(false);
        let body = match self.call(&url, None, &never)? {
            Answer::Ok(body) => body,
            Answer::Status(404, message) => {
                return Err(BatchError::UnknownEndpoint {
                    agent: self.base.clone(),
                    endpoint: self.endpoint.clone(),
                    message,
                })
            }
            Answer::Status(status, message) => {
                return Err(BatchError::Server {
                    url,
                    status,
                    message,
                })
            }
        };
        let meta: ModelMetadata =
            serde_json::from_slice(&body).map_err(|e| BatchError::BadAnswer {
                url: url.clone(),
                message: format!("model metadata: {e}"),
            })?;
        self.pick_input(meta, name)
    }

    fn pick_input(
        &self,
        meta: ModelMetadata,
        name: Option<&str>,
    ) -> Result<ModelInput, BatchError> {
        let unsupported = |message: String| BatchError::UnsupportedModel {
            endpoint: self.endpoint.clone(),
            message,
        };
        let names = || {
            meta.inputs
                .iter()
                .map(|i| format!("{:?}", i.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let input = match name {
            Some(n) => meta.inputs.iter().find(|i| i.name == n).ok_or_else(|| {
                BatchError::Usage(format!(
                    "--input-name {n:?}: the model's inputs are {}",
                    names()
                ))
            })?,
            None => match meta.inputs.as_slice() {
                [one] => one,
                [] => return Err(unsupported("the model has no inputs".to_owned())),
                _ => {
                    return Err(BatchError::Usage(format!(
                        "the model has inputs {}; name the one to fill with --input-name",
                        names()
                    )))
                }
            },
        };
        if !NUMERIC.contains(&input.datatype.as_str()) {
            return Err(unsupported(format!(
                "input {:?} is {}; batch sends numbers only",
                input.name, input.datatype
            )));
        }
        let (batch_fixed_to_one, width) = match input.shape.as_slice() {
            [b, w] if *b == -1 || *b == 1 => (*b == 1, usize::try_from(*w).ok()),
            shape => {
                return Err(unsupported(format!(
                    "input {:?} has shape {shape:?}; batch fills [rows, features] inputs \
                     (rows variable or 1)",
                    input.name
                )))
            }
        };
        Ok(ModelInput {
            name: input.name.clone(),
            datatype: input.datatype.clone(),
            width,
            batch_fixed_to_one,
        })
    }

    /// Scores `rows` (each of the input's width) as one request.
    ///
    /// # Errors
    ///
    /// [`BatchError::Unreachable`] or [`BatchError::Server`] once retries are
    /// spent, [`BatchError::UnknownEndpoint`] on a 404, [`BatchError::BadAnswer`]
    /// for answers that do not fit the rows sent, [`BatchError::Cancelled`] when
    /// `cancel` was set between tries.
    pub(crate) fn infer(
        &self,
        input: &ModelInput,
        rows: &[&[Number]],
        cancel: &AtomicBool,
    ) -> Result<Reply, BatchError> {
        let width = rows.first().map_or(0, |r| r.len());
        let request = InferRequest {
            inputs: [InferInput {
                name: &input.name,
                shape: [rows.len(), width],
                datatype: &input.datatype,
                data: FlatRows(rows),
            }],
        };
        let body = serde_json::to_vec(&request).map_err(|e| BatchError::Usage(e.to_string()))?;
        let url = format!("{}/infer", self.model_url());
        match self.call(&url, Some(&body), cancel)? {
            Answer::Ok(answer) => split_rows(&answer, rows.len())
                .map(Reply::Scored)
                .map_err(|message| BatchError::BadAnswer { url, message }),
            Answer::Status(404, message) => Err(BatchError::UnknownEndpoint {
                agent: self.base.clone(),
                endpoint: self.endpoint.clone(),
                message,
            }),
            Answer::Status(_, message) => Ok(Reply::Rejected(message)),
        }
    }

    /// One call with retries: transport errors, 5xx, 408 and 429 are retried
    /// after a doubling backoff; other statuses are returned.
    fn call(
        &self,
        url: &str,
        body: Option<&[u8]>,
        cancel: &AtomicBool,
    ) -> Result<Answer, BatchError> {
        let mut wait = self.backoff;
        let mut attempt = 0;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(BatchError::Cancelled);
            }
            let result = match body {
                Some(b) => self
                    .http
                    .post(url)
                    .set("Content-Type", "application/json")
                    .send_bytes(b),
                None => self.http.get(url).call(),
            };
            let failure = match result {
                Ok(resp) => {
                    return self.read_body(url, resp).map(Answer::Ok);
                }
                Err(ureq::Error::Status(status, resp)) => {
                    let message = error_message(resp, self.limits.max_response_bytes);
                    if !retryable(status) {
                        return Ok(Answer::Status(status, message));
                    }
                    BatchError::Server {
                        url: url.to_owned(),
                        status,
                        message,
                    }
                }
                Err(ureq::Error::Transport(t)) => {
                    let text = t.to_string();
                    let prefix = format!("{url}: ");
                    BatchError::Unreachable {
                        url: url.to_owned(),
                        message: one_line(text.strip_prefix(&prefix).unwrap_or(&text)),
                    }
                }
            };
            if attempt >= self.retries {
                return Err(failure);
            }
            attempt += 1;
            tracing::debug!(%url, attempt, error = %failure, "retrying");
            std::thread::sleep(wait);
            wait = (wait * 2).min(MAX_BACKOFF);
        }
    }

    fn read_body(&self, url: &str, resp: ureq::Response) -> Result<Vec<u8>, BatchError> {
        let mut body = Vec::new();
        let limit = self.limits.max_response_bytes;
        resp.into_reader()
            .take(limit.saturating_add(1))
            .read_to_end(&mut body)
            .map_err(|e| BatchError::Unreachable {
                url: url.to_owned(),
                message: format!("reading the answer: {e}"),
            })?;
        if body.len() as u64 > limit {
            return Err(BatchError::BadAnswer {
                url: url.to_owned(),
                message: format!("the answer is larger than {limit} bytes"),
            });
        }
        Ok(body)
    }
}

/// A call's outcome that is not a transport failure.
enum Answer {
    /// 2xx, with the body.
    Ok(Vec<u8>),
    /// A status not retried, with the agent's message.
    Status(u16, String),
}

fn retryable(status: u16) -> bool {
    matches!(status, 408 | 429) || status >= 500
}

/// The `error` of a JSON error body, else the body's first line.
fn error_message(resp: ureq::Response, limit: u64) -> String {
    let status = resp.status();
    let mut body = Vec::new();
    let _ = resp
        .into_reader()
        .take(limit.min(1 << 20))
        .read_to_end(&mut body);
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    let message = one_line(&message);
    if message.is_empty() {
        format!("HTTP {status}")
    } else {
        message
    }
}

/// `s` on one line, at most 300 characters.
fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect()
}

/// `s` percent-encoded as one URL path segment.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Deserialize)]
struct ModelMetadata {
    #[serde(default)]
    inputs: Vec<TensorMetadata>,
}

#[derive(Debug, Deserialize)]
struct TensorMetadata {
    name: String,
    datatype: String,
    shape: Vec<i64>,
}

#[derive(Serialize)]
struct InferRequest<'a> {
    inputs: [InferInput<'a>; 1],
}

#[derive(Serialize)]
struct InferInput<'a> {
    name: &'a str,
    shape: [usize; 2],
    datatype: &'a str,
    data: FlatRows<'a>,
}

/// Rows written as one flat, row-major array.
struct FlatRows<'a>(&'a [&'a [Number]]);

impl Serialize for FlatRows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().flat_map(|r| r.iter()))
    }
}

#[derive(Debug, Deserialize)]
struct InferResponse {
    outputs: Vec<OutputTensor>,
}

#[derive(Debug, Deserialize)]
struct OutputTensor {
    name: String,
    shape: Vec<u64>,
    data: Option<Value>,
}

/// Splits an infer answer into `rows` rows of outputs.
fn split_rows(body: &[u8], rows: usize) -> Result<Vec<RowOutputs>, String> {
    let answer: InferResponse =
        serde_json::from_slice(body).map_err(|e| format!("not an infer answer: {e}"))?;
    let mut out: Vec<RowOutputs> = (0..rows)
        .map(|_| Vec::with_capacity(answer.outputs.len()))
        .collect();
    for tensor in answer.outputs {
        let name: Arc<str> = Arc::from(tensor.name.as_str());
        if tensor.shape.first().copied() != Some(rows as u64) {
            return Err(format!(
                "output {:?} has shape {:?} for {rows} rows",
                tensor.name, tensor.shape
            ));
        }
        let mut flat = Vec::new();
        flatten(tensor.data.unwrap_or(Value::Null), &mut flat);
        let count = tensor.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        if count != Some(flat.len() as u64) {
            return Err(format!(
                "output {:?} has {} values for shape {:?}",
                tensor.name,
                flat.len(),
                tensor.shape
            ));
        }
        let per_row = flat.len().checked_div(rows).unwrap_or(0);
        let mut values = flat.into_iter();
        for row in &mut out {
            row.push((Arc::clone(&name), values.by_ref().take(per_row).collect()));
        }
    }
    Ok(out)
}

/// Appends the leaves of `v` (nested arrays flattened row-major; `null`, i.e.
/// no data, adds nothing).
fn flatten(v: Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(items) => {
            for item in items {
                flatten(item, out);
            }
        }
        Value::Null => {}
        leaf => out.push(leaf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_answer_splits_into_rows_in_output_order() {
        let body = json!({"outputs": [
            {"name": "b", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},
            {"name": "a", "shape": [2], "datatype": "INT64", "data": [[5], [6]]},
        ]});
        let rows = split_rows(body.to_string().as_bytes(), 2).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(&*rows[1][0].0, "b");
        assert_eq!(rows[1][0].1, [json!(3), json!(4)]);
        assert_eq!(&*rows[1][1].0, "a");
        assert_eq!(rows[0][1].1, [json!(5)]);
    }

    #[test]
    fn answers_that_do_not_fit_the_rows_are_refused() {
        let short = json!({"outputs": [{"name": "y", "shape": [3, 1], "data": [1, 2, 3]}]});
        let e = split_rows(short.to_string().as_bytes(), 2).unwrap_err();
        assert!(e.contains("for 2 rows"), "{e}");
        let missing = json!({"outputs": [{"name": "y", "shape": [2, 2], "data": [1, 2, 3]}]});
        let e = split_rows(missing.to_string().as_bytes(), 2).unwrap_err();
        assert!(e.contains("3 values"), "{e}");
    }

    #[test]
    fn rows_go_out_flat_with_their_numbers_as_written() {
        let a = [Number::from(1), Number::from_f64(0.5).unwrap()];
        let b = [Number::from(-2), Number::from(3)];
        let rows: [&[Number]; 2] = [&a, &b];
        let req = InferRequest {
            inputs: [InferInput {
                name: "x",
                shape: [2, 2],
                datatype: "INT64",
                data: FlatRows(&rows),
            }],
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"INT64","data":[1,0.5,-2,3]}]}"#
        );
    }

    #[test]
    fn endpoint_names_are_escaped_in_paths() {
        assert_eq!(path_segment("mlp-v2.1_x"), "mlp-v2.1_x");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn only_plain_http_agent_urls_are_accepted() {
        assert!(check_agent_url("http://127.0.0.1:8441").is_ok());
        assert!(check_agent_url("https://x").is_err());
        assert!(check_agent_url("127.0.0.1:8441").is_err());
        assert!(check_agent_url("http://").is_err());
    }
}
