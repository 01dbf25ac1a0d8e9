//! The output file: one JSON line per input row, in input order, resumable.
//!
//! Opening an existing file resumes it: the complete lines (up to the last
//! `\n`) are counted, a partial last line is cut off, and the last complete
//! line's `row` must be the count minus one, so the file is known to hold rows
//! `0..count` and nothing else. Writes are buffered and flushed after each
//! batch, so an interrupted run loses at most the batches in flight.
//!
//! It does not check that the lines came from the same input (only the count
//! and the last row number can be checked without reading the input twice).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

use super::BatchError;

/// One output line: a scored row's outputs or a rejected row's reason.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutputLine {
    /// The input row's number.
    pub(crate) row: u64,
    /// The input row's `id`, when it had one.
    pub(crate) id: Option<Value>,
    /// What became of the row.
    pub(crate) outcome: Outcome,
}

/// What became of one row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    /// Each output's name and the row's values, in the agent's order.
    Scored(Vec<(Arc<str>, Vec<Value>)>),
    /// Rejected: the one-line message and the reason it is grouped under.
    Rejected {
        /// The message written to the file.
        message: String,
        /// The message without row-specific details.
        reason: String,
    },
}

impl Serialize for OutputLine {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("row", &self.row)?;
        if let Some(id) = &self.id {
            map.serialize_entry("id", id)?;
        }
        match &self.outcome {
            Outcome::Scored(outputs) => map.serialize_entry("outputs", &Outputs(outputs))?,
            Outcome::Rejected { message, .. } => map.serialize_entry("error", message)?,
        }
        map.end()
    }
}

/// Outputs as a JSON object in the agent's order.
struct Outputs<'a>(&'a [(Arc<str>, Vec<Value>)]);

impl Serialize for Outputs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (&**k, v)))
    }
}

/// The output file, open for appending.
#[derive(Debug)]
pub(crate) struct OutputFile {
    path: PathBuf,
    writer: BufWriter<File>,
}

/// An opened output file and what it already held.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The file, positioned after its last complete line.
    pub(crate) file: OutputFile,
    /// Complete lines it held: rows `0..rows` are done.
    pub(crate) rows: u64,
    /// Bytes of a partial last line cut off.
    pub(crate) dropped: u64,
}

impl OutputFile {
    /// Opens `path`: created when missing, truncated with `restart`, else
    /// resumed.
    ///
    /// # Errors
    ///
    /// [`BatchError::Output`] on I/O errors, [`BatchError::OutputMismatch`] when
    /// the last complete line's `row` is not the line count minus one.
    pub(crate) fn open(path: &Path, restart: bool) -> Result<Opened, BatchError> {
        let io = |source| BatchError::Output {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(restart)
            .open(path)
            .map_err(io)?;
        let (rows, end, last) = scan(&file).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if rows > 0 {
            check_last_line(path, rows, &last)?;
        }
        if len > end {
            file.set_len(end).map_err(io)?;
        }
        file.seek(SeekFrom::Start(end)).map_err(io)?;
        Ok(Opened {
            file: Self {
                path: path.to_owned(),
                writer: BufWriter::with_capacity(256 << 10, file),
            },
            rows,
            dropped: len.saturating_sub(end),
        })
    }

    /// Appends one line (buffered).
    ///
    /// # Errors
    ///
    /// [`BatchError::Output`].
    pub(crate) fn write(&mut self, line: &OutputLine) -> Result<(), BatchError> {
        serde_json::to_writer(&mut self.writer, line)
            .map_err(std::io::Error::from)
            .and_then(|()| self.writer.write_all(b"\n"))
            .map_err(|source| self.error(source))
    }

    /// Hands buffered lines to the OS.
    ///
    /// # Errors
    ///
    /// [`BatchError::Output`].
    pub(crate) fn flush(&mut self) -> Result<(), BatchError> {
        self.writer.flush().map_err(|source| self.error(source))
    }

    /// Flushes and syncs the file to disk.
    ///
    /// # Errors
    ///
    /// [`BatchError::Output`].
    pub(crate) fn finish(&mut self) -> Result<(), BatchError> {
        self.flush()?;
        self.writer
            .get_ref()
            .sync_data()
            .map_err(|source| self.error(source))
    }

    fn error(&self, source: std::io::Error) -> BatchError {
        BatchError::Output {
            path: self.path.clone(),
            source,
        }
    }
}

/// Counts complete lines; returns the count, the offset after the last `\n`,
/// and the last complete line.
fn scan(file: &File) -> std::io::Result<(u64, u64, Vec<u8>)> {
    let mut reader = BufReader::with_capacity(256 << 10, file);
    let (mut rows, mut end, mut offset) = (0u64, 0u64, 0u64);
    let mut line = Vec::new();
    let mut last = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok((rows, end, last));
        }
        offset += n as u64;
        if line.last() == Some(&b'\n') {
            rows += 1;
            end = offset;
            std::mem::swap(&mut line, &mut last);
        }
    }
}

fn check_last_line(path: &Path, rows: u64, last: &[u8]) -> Result<(), BatchError> {
    let row = serde_json::from_slice::<Value>(last)
        .ok()
        .and_then(|v| v.get("row").and_then(Value::as_u64));
    match row {
        Some(r) if r + 1 == rows => Ok(()),
        found => Err(BatchError::OutputMismatch {
            path: path.to_owned(),
            message: format!(
                "cannot resume: it has {rows} complete lines but the last one is {}; \
                 give --restart to start over",
                found.map_or_else(
                    || "not a batch output line".to_owned(),
                    |r| format!("row {r}")
                )
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(row: u64) -> OutputLine {
        OutputLine {
            row,
            id: None,
            outcome: Outcome::Scored(vec![(Arc::from("y"), vec![json!(row)])]),
        }
    }

    #[test]
    fn lines_are_written_as_the_format_says() {
        let scored = OutputLine {
            row: 3,
            id: Some(json!("a")),
            outcome: Outcome::Scored(vec![
                (Arc::from("z"), vec![json!(1.5)]),
                (Arc::from("a"), vec![json!(2)]),
            ]),
        };
        assert_eq!(
            serde_json::to_string(&scored).unwrap(),
            r#"{"row":3,"id":"a","outputs":{"z":[1.5],"a":[2]}}"#
        );
        let rejected = OutputLine {
            row: 4,
            id: None,
            outcome: Outcome::Rejected {
                message: "x.csv line 6: bad".into(),
                reason: "bad".into(),
            },
        };
        assert_eq!(
            serde_json::to_string(&rejected).unwrap(),
            r#"{"row":4,"error":"x.csv line 6: bad"}"#
        );
    }

    #[test]
    fn a_partial_last_line_is_cut_and_complete_lines_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"row\":0}\n{\"row\":1}\n{\"row\":2,\"out").unwrap();
        let mut opened = OutputFile::open(&path, false).unwrap();
        assert_eq!((opened.rows, opened.dropped), (2, 13));
        opened.file.write(&line(2)).unwrap();
        opened.file.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"row\":0}\n{\"row\":1}\n{\"row\":2,\"outputs\":{\"y\":[2]}}\n"
        );
    }

    #[test]
    fn a_file_whose_last_row_does_not_match_its_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"row\":0}\n{\"row\":5}\n").unwrap();
        let e = OutputFile::open(&path, false).unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().contains("last one is row 5"), "{e}");
        std::fs::write(&path, "hello\n").unwrap();
        let e = OutputFile::open(&path, false).unwrap_err();
        assert!(e.to_string().contains("not a batch output line"), "{e}");
        // Untouched by the refusal.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
    }

    #[test]
    fn restart_truncates_and_missing_files_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let opened = OutputFile::open(&path, false).unwrap();
        assert_eq!((opened.rows, opened.dropped), (0, 0));
        std::fs::write(&path, "{\"row\":0}\n").unwrap();
        let opened = OutputFile::open(&path, true).unwrap();
        assert_eq!(opened.rows, 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
