//! The `batch` subcommand: its flags turned into [`BatchOptions`], the progress
//! bar on stderr, the summary on stdout and the exit code.
//!
//! Exit codes: 0 every row scored, 4 finished with rejected rows, 1 the agent
//! unreachable or failing, 2 bad usage, input or endpoint, 3 output file
//! problems.
//!
//! It does not score anything itself (that is [`super::score_file`]).

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{score_file, BatchError, BatchOptions, InputFormat, Limits, Observer};
use crate::cli::BatchArgs;

/// Exit code when every row was handled but some were rejected.
pub const EXIT_REJECTED: u8 = 4;

/// Format of the summary printed at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SummaryFormat {
    /// Counts on one line, then rejected reasons one per line.
    Text,
    /// One JSON object.
    Json,
}

/// Runs `batch` with `args`; prints the summary and returns the exit code.
#[must_use]
pub fn run(args: &BatchArgs) -> ExitCode {
    let options = match options(args) {
        Ok(o) => o,
        Err(e) => return fail(&e, args),
    };
    let show = !args.no_progress && std::io::stderr().is_terminal();
    let mut progress = Progress::new(show);
    let result = score_file(&options, &mut progress);
    progress.bar.finish_and_clear();
    let summary = match result {
        Ok(s) => s,
        Err(e) => return fail(&e, args),
    };
    match args.output_format {
        SummaryFormat::Text => print!("{}", summary.text()),
        SummaryFormat::Json => println!("{}", summary.to_json()),
    }
    if summary.rejected > 0 {
        ExitCode::from(EXIT_REJECTED)
    } else {
        ExitCode::SUCCESS
    }
}

fn fail(e: &BatchError, args: &BatchArgs) -> ExitCode {
    eprintln!("error: {e}");
    if e.exit_code() == 1 {
        eprintln!(
            "rows finished so far are in {}; run the same command again to resume",
            args.output.display()
        );
    }
    ExitCode::from(e.exit_code())
}

/// The options `args` ask for.
///
/// # Errors
///
/// [`BatchError::Usage`] when the input's format cannot be told or the input
/// and output are the same file.
pub fn options(args: &BatchArgs) -> Result<BatchOptions, BatchError> {
    let format = match args.format.or_else(|| InputFormat::from_path(&args.input)) {
        Some(f) => f,
        None => {
            return Err(BatchError::Usage(format!(
            "cannot tell the format of {} from its extension; give --format csv or --format jsonl",
            args.input.display()
        )))
        }
    };
    let same = args.input == args.output
        || matches!(
            (args.input.canonicalize(), args.output.canonicalize()),
            (Ok(a), Ok(b)) if a == b
        );
    if same {
        return Err(BatchError::Usage(format!(
            "--input and --output are the same file ({})",
            args.input.display()
        )));
    }
    Ok(BatchOptions {
        agent: args.agent.clone(),
        endpoint: args.endpoint.clone(),
        input: args.input.clone(),
        format,
        output: args.output.clone(),
        batch_rows: args.batch_rows,
        concurrency: args.concurrency,
        input_name: args.input_name.clone(),
        restart: args.restart,
        retries: args.retries,
        backoff: Duration::from_millis(250),
        request_timeout: Duration::from_secs(args.request_timeout_s),
        limits: Limits::default(),
    })
}

/// Shows a run on stderr: the resume note always, the bar when `show`.
#[derive(Debug)]
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(show: bool) -> Self {
        let bar = if show {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        } else {
            ProgressBar::hidden()
        };
        Self { bar }
    }
}

impl Observer for Progress {
    fn resuming(&mut self, rows: u64, dropped: u64) {
        if dropped > 0 {
            eprintln!("resuming after {rows} rows (cut a partial last line of {dropped} bytes)");
        } else {
            eprintln!("resuming after {rows} rows");
        }
    }

    fn started(&mut self, total: u64) {
        self.bar.set_length(total);
    }

    fn read_up_to(&mut self, position: u64) {
        self.bar.set_position(position);
    }
}
