//! CSV input: a header row, then one record per row; every column a feature.
//!
//! It does not guess delimiters or quote styles: commas, double quotes, as RFC
//! 4180 and the `csv` crate's defaults say. Records of another width than the
//! header are rejected rows, not errors.

use std::collections::VecDeque;
use std::io::Read;

use csv::{ByteRecord, ReaderBuilder, Trim};

use super::{parse_number, Row, RowProblem};
use crate::batch::Limits;

/// Why the header could not be read.
#[derive(Debug)]
pub(crate) enum HeaderError {
    /// Reading failed.
    Io(std::io::Error),
    /// The file has no records at all.
    Missing,
}

/// The data rows of a CSV file.
#[derive(Debug)]
pub struct CsvRows<R> {
    reader: csv::Reader<LineCounter<R>>,
    /// Column names, for messages.
    names: Vec<String>,
    record: ByteRecord,
    next_index: u64,
    limits: Limits,
}

impl<R: Read> CsvRows<R> {
    /// Reads the header row of `input`.
    pub(crate) fn new(input: R, limits: Limits) -> Result<Self, HeaderError> {
        let mut reader = ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            // Cells are trimmed when parsed, so quoted newlines count here.
            .trim(Trim::Headers)
            .from_reader(LineCounter::new(input));
        let header = reader
            .byte_headers()
            .map_err(|e| HeaderError::Io(io_error(e)))?;
        if header.is_empty() {
            return Err(HeaderError::Missing);
        }
        let names = header
            .iter()
            .map(|n| String::from_utf8_lossy(n).chars().take(40).collect())
            .collect();
        Ok(Self {
            reader,
            names,
            record: ByteRecord::new(),
            next_index: 0,
            limits,
        })
    }

    /// Columns in the header.
    pub fn width(&self) -> usize {
        self.names.len()
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.reader.position().byte()
    }

    /// The next data row; `None` at the end.
    ///
    /// # Errors
    ///
    /// Reading the underlying file failed.
    pub fn next_row(&mut self) -> std::io::Result<Option<Row>> {
        if !self
            .reader
            .read_byte_record(&mut self.record)
            .map_err(io_error)?
        {
            return Ok(None);
        }
        // Design: csv's own line numbers do not count blank lines, and a
        // record's start offset is where the blank lines before it begin. The
        // offset after it is exact: its last byte is on the record's last
        // line; newlines inside quoted cells lead back to its first.
        let end = self.reader.position().byte().saturating_sub(1);
        let inside = self
            .record
            .as_slice()
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        let line = self
            .reader
            .get_mut()
            .line_at(end)
            .saturating_sub(inside as u64);
        let index = self.next_index;
        self.next_index += 1;
        Ok(Some(Row {
            index,
            line,
            id: None,
            cells: self.cells(),
        }))
    }

    fn cells(&self) -> Result<Vec<serde_json::Number>, RowProblem> {
        let record = &self.record;
        // Off-spec: the csv crate has no bound of its own, so a huge record is
        // held once before it is rejected here.
        if record.as_slice().len() > self.limits.max_line_bytes {
            return Err(RowProblem::TooLong {
                limit: self.limits.max_line_bytes,
            });
        }
        if record.len() > self.limits.max_row_values {
            return Err(RowProblem::TooWide {
                limit: self.limits.max_row_values,
            });
        }
        if record.len() != self.names.len() {
            return Err(RowProblem::WrongWidth {
                got: record.len(),
                want: self.names.len(),
            });
        }
        let at = |i: usize| {
            let name = self.names.get(i).map_or("", String::as_str);
            format!("column {} ({name:?})", i + 1)
        };
        record
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let text =
                    std::str::from_utf8(cell).map_err(|_| RowProblem::NotUtf8 { at: at(i) })?;
                parse_number(text, || at(i))
            })
            .collect()
    }
}

/// Passes bytes through and remembers where the newlines are, so the line a
/// byte offset is on can be told once the parser gets there.
#[derive(Debug)]
struct LineCounter<R> {
    inner: R,
    /// Bytes read so far.
    offset: u64,
    /// Offsets of newlines read but not yet passed by [`LineCounter::line_at`]
    /// (at most one read-ahead buffer's worth).
    pending: VecDeque<u64>,
    /// Newlines passed.
    passed: u64,
}

impl<R> LineCounter<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            pending: VecDeque::new(),
            passed: 0,
        }
    }

    /// The 1-based line byte `offset` is on; offsets must not decrease.
    fn line_at(&mut self, offset: u64) -> u64 {
        while self.pending.front().is_some_and(|&n| n < offset) {
            self.pending.pop_front();
            self.passed += 1;
        }
        self.passed + 1
    }
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let start = self.offset;
        let got = buf.get(..n).unwrap_or_default();
        self.pending.extend(
            got.iter()
                .enumerate()
                .filter(|(_, &b)| b == b'\n')
                .map(|(i, _)| start + i as u64),
        );
        self.offset += n as u64;
        Ok(n)
    }
}

fn io_error(e: csv::Error) -> std::io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => std::io::Error::other(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Vec<Row> {
        let mut r = CsvRows::new(text.as_bytes(), Limits::default()).unwrap();
        let mut out = Vec::new();
        while let Some(row) = r.next_row().unwrap() {
            out.push(row);
        }
        out
    }

    fn values(row: &Row) -> Vec<String> {
        row.cells
            .as_ref()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_header_is_not_a_row_and_cells_keep_their_types() {
        let r = rows("a,b,c\n1,2.5,-3\n 4 , 5 ,6e0\n");
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].index, r[0].line), (0, 2));
        assert_eq!(values(&r[0]), ["1", "2.5", "-3"]);
        assert_eq!((r[1].index, r[1].line), (1, 3));
        assert_eq!(values(&r[1]), ["4", "5", "6.0"]);
    }

    #[test]
    fn blank_lines_are_skipped_and_not_numbered() {
        let r = rows("a,b\n1,2\n\n\n3,4\r\n\r\n5,6\n\"7\n\",8\n\n9,9");
        let seen: Vec<(u64, u64)> = r.iter().map(|r| (r.index, r.line)).collect();
        assert_eq!(seen, [(0, 2), (1, 5), (2, 7), (3, 8), (4, 11)]);
        assert_eq!(values(&r[2]), ["5", "6"]);
        assert_eq!(values(&r[4]), ["9", "9"]);
    }

    #[test]
    fn bad_cells_and_wrong_widths_reject_only_their_row() {
        let r = rows("x,y\n1,abc\n1\n1,2,3\n,2\n1,NaN\n7,8\n");
        assert_eq!(r.len(), 6);
        assert_eq!(
            r[0].cells.as_ref().unwrap_err().to_string(),
            "column 2 (\"y\"): \"abc\" is not a number"
        );
        assert_eq!(r[1].cells, Err(RowProblem::WrongWidth { got: 1, want: 2 }));
        assert_eq!(r[2].cells, Err(RowProblem::WrongWidth { got: 3, want: 2 }));
        assert!(matches!(r[3].cells, Err(RowProblem::NotANumber { .. })));
        assert!(matches!(r[4].cells, Err(RowProblem::NotFinite { .. })));
        assert_eq!(values(&r[5]), ["7", "8"]);
        assert_eq!(r[5].index, 5);
    }

    #[test]
    fn quoted_cells_and_invalid_utf8_are_handled() {
        let r = rows("a,b\n\"1\",\" 2 \"\n");
        assert_eq!(values(&r[0]), ["1", "2"]);
        let mut bytes = b"a,b\n1,".to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe, b'\n']);
        let mut reader = CsvRows::new(&bytes[..], Limits::default()).unwrap();
        let row = reader.next_row().unwrap().unwrap();
        assert_eq!(
            row.cells.unwrap_err().to_string(),
            "column 2 (\"b\"): not valid UTF-8"
        );
    }

    #[test]
    fn an_empty_file_has_no_header() {
        assert!(matches!(
            CsvRows::new(&b""[..], Limits::default()),
            Err(HeaderError::Missing)
        ));
    }

    #[test]
    fn rows_past_the_limits_are_rejected() {
        let limits = Limits {
            max_row_values: 2,
            ..Limits::default()
        };
        let mut r = CsvRows::new(&b"a,b,c\n1,2,3\n"[..], limits).unwrap();
        let row = r.next_row().unwrap().unwrap();
        assert_eq!(row.cells, Err(RowProblem::TooWide { limit: 2 }));
    }
}
