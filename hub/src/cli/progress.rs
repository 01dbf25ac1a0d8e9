//! Progress bars for uploads and downloads, on stderr.
//!
//! Shown only to a person: when the output format is text and stderr is a
//! terminal. Scripts (`--output json`, redirected stderr) get no bar, and no
//! escape codes in their logs. Notices printed while a bar is up go through
//! [`Progress::note`] so they do not tear the bar.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::upload::UploadEvent;
use super::Output;

/// A byte-counting progress bar, maybe hidden.
#[derive(Debug)]
pub(crate) struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for `len` bytes (a spinner when unknown) labelled `label`.
    pub(crate) fn bytes(output: Output, label: &str, len: Option<u64>) -> Self {
        if output != Output::Text || !std::io::stderr().is_terminal() {
            return Self {
                bar: ProgressBar::hidden(),
            };
        }
        let bar = match len {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {msg} {bytes} {binary_bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_message(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar }
    }

    /// A spinner with elapsed time, for a wait of unknown length.
    pub(crate) fn spinner(output: Output, label: &str) -> Self {
        if output != Output::Text || !std::io::stderr().is_terminal() {
            return Self {
                bar: ProgressBar::hidden(),
            };
        }
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar }
    }

    /// Sets the bytes done.
    pub(crate) fn set(&self, done: u64) {
        self.bar.set_position(done);
    }

    /// Adds to the bytes done.
    pub(crate) fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// Prints a line on stderr above the bar (or plainly when hidden).
    pub(crate) fn note(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Handles an upload event: moves the bar, or reports a retry.
    pub(crate) fn upload_event(&self, e: UploadEvent<'_>) {
        match e {
            UploadEvent::Progress(n) => self.set(n),
            UploadEvent::Retrying {
                error,
                failures,
                max,
                wait,
            } => self.note(&format!(
                "warning: upload interrupted ({error}); resuming in {:.1}s (failure {failures} of {max})",
                wait.as_secs_f64()
            )),
        }
    }

    /// Removes the bar.
    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
