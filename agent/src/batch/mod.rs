//! `flotilla-agent batch`: scoring a CSV or JSONL file through a running agent's
//! scoring API (Open Inference Protocol v2 REST), rows in, one JSON line per row
//! out, in input order.
//!
//! The model's input is read from `GET /v2/models/{endpoint}`; rows are read
//! lazily, grouped into requests of `batch_rows` rows, sent `concurrency` at a
//! time and written back in order as they complete. A request the agent rejects
//! with a 4xx is retried row by row, so only the bad rows are rejected; 5xx
//! answers, 408, 429 and connection errors are retried with backoff and then
//! stop the run, leaving an output file a later run resumes.
//!
//! It does not serve or run models (that is [`crate::serve`]), speak the binary
//! tensor extension, or hold more than `concurrency * batch_rows` rows in memory.
//!
//! # Layout
//!
//! - [`rows`]: the input formats and parsing one row (CSV, JSONL).
//! - `client`: the agent's metadata and infer calls, retries and backoff.
//! - `output`: the output file: resuming, truncating a partial line, writing.
//! - `pipeline`: batches out to worker threads, results back in input order.
//! - [`summary`]: counts and rejected reasons, as text or JSON.
//! - [`command`]: the `batch` subcommand: flags to options, progress bar, exit
//!   codes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod client;
pub mod command;
mod output;
mod pipeline;
pub mod rows;
pub mod summary;

pub use client::ModelInput;
pub use rows::{InputFormat, RowProblem};
pub use summary::Summary;

/// Bounds on what one input row may cost, whoever wrote the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest JSONL line in bytes; a longer one is a rejected row, skipped
    /// without being held in memory. CSV records are checked after reading
    /// (`csv` has no bound of its own).
    pub max_line_bytes: usize,
    /// Most values in one row.
    pub max_row_values: usize,
    /// Largest response body read from the agent, in bytes.
    pub max_response_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_line_bytes: 16 << 20,
            max_row_values: 1 << 20,
            max_response_bytes: 1 << 30,
        }
    }
}

/// What to score and how; built from the command line by [`command`].
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// The agent's scoring API base URL (`http://HOST:PORT`).
    pub agent: String,
    /// The endpoint (model name in the v2 paths) to score with.
    pub endpoint: String,
    /// The input file.
    pub input: PathBuf,
    /// How the input file is written.
    pub format: InputFormat,
    /// The output file (JSONL), resumed when it exists unless `restart`.
    pub output: PathBuf,
    /// Rows per request (at least 1).
    pub batch_rows: usize,
    /// Requests in flight at once (at least 1).
    pub concurrency: usize,
    /// The model input to fill (default: the model's only input).
    pub input_name: Option<String>,
    /// Truncate the output instead of resuming it.
    pub restart: bool,
    /// Retries of a request after a 5xx, 408, 429 or connection error.
    pub retries: u32,
    /// Wait before the first retry; doubled each time, at most 5 s.
    pub backoff: Duration,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// Bounds on input rows and answers.
    pub limits: Limits,
}

/// Why a batch run stopped before the end of the input. Row-level problems are
/// not errors: they become `{"row": N, "error": ...}` lines.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The options do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// The input file cannot be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Input {
        /// The input file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The input cannot be scored as a whole (no CSV header, width unlike the
    /// model's).
    #[error("{}: {message}", path.display())]
    InputShape {
        /// The input file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The agent does not serve the endpoint (404 from its metadata).
    #[error("the agent at {agent} does not serve endpoint {endpoint:?}: {message}")]
    UnknownEndpoint {
        /// The agent's base URL.
        agent: String,
        /// The endpoint asked for.
        endpoint: String,
        /// The agent's message.
        message: String,
    },
    /// The model's signature is not one this command can fill (more than one
    /// input, a non-numeric datatype, an input that is not `[rows, features]`).
    #[error("endpoint {endpoint:?}: {message}")]
    UnsupportedModel {
        /// The endpoint.
        endpoint: String,
        /// What does not fit.
        message: String,
    },
    /// The agent could not be reached, retries included.
    #[error("agent unreachable at {url}: {message}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// The last transport error.
        message: String,
    },
    /// The agent kept answering with a server error, retries included.
    #[error("agent answered {status} from {url}: {message}")]
    Server {
        /// The URL called.
        url: String,
        /// The last HTTP status.
        status: u16,
        /// The agent's message.
        message: String,
    },
    /// The agent's answer is not what the protocol says.
    #[error("unexpected answer from {url}: {message}")]
    BadAnswer {
        /// The URL called.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The output file cannot be opened, read, truncated or written.
    #[error("cannot write {}: {source}", path.display())]
    Output {
        /// The output file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The output file is not a resumable output of this input.
    #[error("{}: {message}", path.display())]
    OutputMismatch {
        /// The output file.
        path: PathBuf,
        /// What does not match.
        message: String,
    },
    /// No worker thread could be started.
    #[error("cannot start worker threads: {0}")]
    Threads(std::io::Error),
    /// The run stopped because another request failed.
    #[error("stopped after another request failed")]
    Cancelled,
}

impl BatchError {
    /// The process exit code: 1 agent unreachable or failing, 2 bad usage,
    /// input or endpoint, 3 output file problems.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Unreachable { .. }
            | Self::Server { .. }
            | Self::BadAnswer { .. }
            | Self::Threads(_)
            | Self::Cancelled => 1,
            Self::Usage(_)
            | Self::Input { .. }
            | Self::InputShape { .. }
            | Self::UnknownEndpoint { .. }
            | Self::UnsupportedModel { .. } => 2,
            Self::Output { .. } | Self::OutputMismatch { .. } => 3,
        }
    }
}

/// What a run tells its caller while it goes: the command shows it on stderr.
pub trait Observer {
    /// The output held `rows` complete rows, which are skipped; `dropped` bytes
    /// of a partial last line were cut off.
    fn resuming(&mut self, rows: u64, dropped: u64) {
        let _ = (rows, dropped);
    }
    /// Scoring starts; the input has `total` bytes.
    fn started(&mut self, total: u64) {
        let _ = total;
    }
    /// The input has been read up to byte `position`.
    fn read_up_to(&mut self, position: u64) {
        let _ = position;
    }
}

/// An [`Observer`] that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Observer for Quiet {}

/// Scores `options.input` into `options.output`; returns what was done.
///
/// # Errors
///
/// Any [`BatchError`]. On an agent or input error mid-run, every row before the
/// failed request is in the output, so running again resumes there.
pub fn score_file(
    options: &BatchOptions,
    observer: &mut dyn Observer,
) -> Result<Summary, BatchError> {
    let start = Instant::now();
    validate(options)?;
    let client = client::AgentClient::new(options);
    let model = client.model_input(options.input_name.as_deref())?;
    let mut reader = rows::RowReader::open(&options.input, options.format, options.limits)?;
    let width = expected_width(&options.input, &model, reader.header_width())?;

    let opened = output::OutputFile::open(&options.output, options.restart)?;
    let mut out = opened.file;
    let mut summary = Summary::new(&options.input, &options.output);
    if opened.rows > 0 || opened.dropped > 0 {
        observer.resuming(opened.rows, opened.dropped);
    }
    let mut row_width = rows::RowWidth::new(width);
    skip_rows(&mut reader, &mut row_width, opened.rows, options)?;
    summary.skipped = opened.rows;

    observer.started(reader.total_bytes());
    observer.read_up_to(reader.position());
    let batch_rows = if model.batch_fixed_to_one {
        1
    } else {
        options.batch_rows
    };
    let run = pipeline::Run {
        client: &client,
        model: &model,
        file_name: options.input.display().to_string(),
        batch_rows,
        concurrency: options.concurrency,
        width: row_width,
    };
    let result = run.score(&mut reader, &mut out, &mut summary, observer);
    summary.elapsed = start.elapsed();
    result?;
    out.finish()?;
    Ok(summary)
}

/// Most requests in flight (one thread each).
pub const MAX_CONCURRENCY: usize = 256;

fn validate(options: &BatchOptions) -> Result<(), BatchError> {
    if options.batch_rows == 0 || options.concurrency == 0 {
        return Err(BatchError::Usage(
            "--batch-rows and --concurrency must be at least 1".to_owned(),
        ));
    }
    if options.concurrency > MAX_CONCURRENCY {
        return Err(BatchError::Usage(format!(
            "--concurrency {} is more than {MAX_CONCURRENCY}",
            options.concurrency
        )));
    }
    if options.endpoint.is_empty() {
        return Err(BatchError::Usage("--endpoint must not be empty".to_owned()));
    }
    client::check_agent_url(&options.agent)
}

/// The row width every row must have: the model's when fixed, else the CSV
/// header's, else (JSONL) the first good row's (`None` here).
fn expected_width(
    input: &Path,
    model: &ModelInput,
    header: Option<usize>,
) -> Result<Option<usize>, BatchError> {
    match (model.width, header) {
        (Some(m), Some(h)) if m != h => Err(BatchError::InputShape {
            path: input.to_owned(),
            message: format!(
                "the header has {h} columns, but input {:?} of the model takes {m} features",
                model.name
            ),
        }),
        (Some(m), _) => Ok(Some(m)),
        (None, h) => Ok(h),
    }
}

/// Reads past the `n` rows an earlier run already wrote.
fn skip_rows(
    reader: &mut rows::RowReader,
    width: &mut rows::RowWidth,
    n: u64,
    options: &BatchOptions,
) -> Result<(), BatchError> {
    for seen in 0..n {
        if next_row(reader, width)?.is_none() {
            return Err(BatchError::OutputMismatch {
                path: options.output.clone(),
                message: format!(
                    "it holds {n} rows but {} has only {seen}; is it the output of \
                     another input? (--restart starts over)",
                    options.input.display()
                ),
            });
        }
    }
    Ok(())
}

/// The next row, held to the width of the others (skipped rows count too, so
/// a resumed run judges rows as an uninterrupted one would).
fn next_row(
    reader: &mut rows::RowReader,
    width: &mut rows::RowWidth,
) -> Result<Option<rows::Row>, BatchError> {
    let Some(mut row) = reader.next_row()? else {
        return Ok(None);
    };
    if matches!(&row.cells, Ok(c) if c.is_empty()) {
        row.cells = Err(RowProblem::Empty);
    }
    width.check(&mut row);
    Ok(Some(row))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> BatchOptions {
        BatchOptions {
            agent: "http://127.0.0.1:8441".into(),
            endpoint: "mlp".into(),
            input: "in.csv".into(),
            format: InputFormat::Csv,
            output: "out.jsonl".into(),
            batch_rows: 64,
            concurrency: 4,
            input_name: None,
            restart: false,
            retries: 4,
            backoff: Duration::from_millis(250),
            request_timeout: Duration::from_secs(120),
            limits: Limits::default(),
        }
    }

    #[test]
    fn out_of_range_options_are_usage_errors() {
        assert!(validate(&options()).is_ok());
        for bad in [
            BatchOptions {
                concurrency: MAX_CONCURRENCY + 1,
                ..options()
            },
            BatchOptions {
                batch_rows: 0,
                ..options()
            },
            BatchOptions {
                agent: "https://node:8441".into(),
                ..options()
            },
        ] {
            let e = validate(&bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
        }
    }

    #[test]
    fn a_csv_header_must_match_a_fixed_model_width() {
        let model = |width| ModelInput {
            name: "input".into(),
            datatype: "FP32".into(),
            width,
            batch_fixed_to_one: false,
        };
        let path = Path::new("in.csv");
        assert_eq!(
            expected_width(path, &model(Some(6)), Some(6)).unwrap(),
            Some(6)
        );
        assert_eq!(
            expected_width(path, &model(None), Some(5)).unwrap(),
            Some(5)
        );
        assert_eq!(
            expected_width(path, &model(Some(6)), None).unwrap(),
            Some(6)
        );
        assert_eq!(expected_width(path, &model(None), None).unwrap(), None);
        let e = expected_width(path, &model(Some(6)), Some(5)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "in.csv: the header has 5 columns, but input \"input\" of the model takes 6 features"
        );
    }
}
