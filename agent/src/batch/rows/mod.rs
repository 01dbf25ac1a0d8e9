//! Input rows: the formats `batch` reads, and one row's features parsed into
//! JSON numbers, or the reason the row cannot be scored.
//!
//! Accepted input, one data row per model input row (`[rows, features]`):
//!
//! - **CSV** (`.csv`): a header row, then one record per row. Every column is a
//!   feature, in header order; cells are numbers (surrounding spaces are
//!   trimmed). Integers stay integers (so `INT64` inputs get `7`, not `7.0`);
//!   `NaN`, `inf` and empty cells are rejected rows.
//! - **JSONL** (`.jsonl`, `.ndjson`): one JSON value per line, either
//!   - an array of numbers: `[0.5, 1, -2]`;
//!   - an object with a `features` array: `{"id": "a7", "features": [0.5, 1, -2]}`
//!     (other keys are ignored);
//!   - an object of named numbers: `{"id": 7, "age": 41, "income": 3.2}`; the
//!     columns are the keys of the first such line, in the order written there,
//!     and every later one must have the same keys (in any order).
//!
//!   In objects, `id` is never a feature: any JSON value there is copied into
//!   the row's output line.
//!
//! Rows are numbered from 0 over data rows: the CSV header is not a row, and
//! blank lines (CSV or JSONL) are skipped and not numbered. A row that does not
//! parse still gets its number, so output lines match input rows one to one.
//!
//! It does not read the whole file (rows are pulled one at a time) and does not
//! know the model's datatype: the agent converts the numbers to the datatype the
//! request declares, and rejects what does not fit.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use serde_json::Number;

use super::{BatchError, Limits};

mod csv_rows;
mod jsonl_rows;

pub use csv_rows::CsvRows;
pub use jsonl_rows::JsonlRows;

/// How the input file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON array or object per line.
    #[value(alias = "ndjson")]
    Jsonl,
}

impl InputFormat {
    /// The format a file name's extension names (`.csv`, `.jsonl`, `.ndjson`,
    /// any case).
    #[must_use]
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Self::Csv),
            "jsonl" | "ndjson" => Some(Self::Jsonl),
            _ => None,
        }
    }
}

/// One data row of the input.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// invariant: data rows numbered from 0 in file order, blank lines not counted.
    pub index: u64,
    /// The 1-based line the row starts on.
    pub line: u64,
    /// The row's `id` (JSONL objects only), copied into its output line.
    pub id: Option<serde_json::Value>,
    /// The features, or why the row cannot be scored.
    pub cells: Result<Vec<Number>, RowProblem>,
}

/// Why one row cannot be scored. The message names the cell, not the file;
/// [`RowProblem::reason`] is the same without row-specific details, for
/// grouping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RowProblem {
    /// A cell is not a number.
    #[error("{at}: {text} is not a number")]
    NotANumber {
        /// Where: `column 3 ("age")`, `value 3`, `key "age"`.
        at: String,
        /// The cell, shortened and quoted (CSV) or as JSON (JSONL).
        text: String,
    },
    /// A cell is NaN or infinite, which JSON cannot carry.
    #[error("{at}: {text} is not a finite number")]
    NotFinite {
        /// Where.
        at: String,
        /// The cell, shortened and quoted.
        text: String,
    },
    /// The row has another number of values than the others.
    #[error("the row has {got} values, expected {want}")]
    WrongWidth {
        /// Values in this row.
        got: usize,
        /// Values every row must have.
        want: usize,
    },
    /// The row has no values.
    #[error("the row has no values")]
    Empty,
    /// The row has more values than [`Limits::max_row_values`].
    #[error("the row has more than {limit} values")]
    TooWide {
        /// The limit.
        limit: usize,
    },
    /// The line is longer than [`Limits::max_line_bytes`].
    #[error("the line is longer than {limit} bytes")]
    TooLong {
        /// The limit.
        limit: usize,
    },
    /// The bytes are not UTF-8.
    #[error("{at}: not valid UTF-8")]
    NotUtf8 {
        /// Where.
        at: String,
    },
    /// A JSONL line is not JSON.
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// A JSONL line is JSON, but not a row.
    #[error("{0}")]
    NotARow(String),
    /// A JSONL object lacks a column the first object row had.
    #[error("key {0:?} is missing (the first object row has it)")]
    MissingKey(String),
    /// A JSONL object has a key the first object row did not have.
    #[error("key {0:?} is not a column (the first object row does not have it)")]
    UnknownKey(String),
    /// The agent rejected the row on its own.
    #[error("rejected by the agent: {0}")]
    Rejected(String),
}

impl RowProblem {
    /// The reason without row-specific details (cells, positions), to group
    /// rejected rows by.
    #[must_use]
    pub fn reason(&self) -> String {
        match self {
            Self::NotANumber { .. } => "a cell is not a number".to_owned(),
            Self::NotFinite { .. } => "a cell is not a finite number".to_owned(),
            Self::NotUtf8 { .. } => "not valid UTF-8".to_owned(),
            Self::NotJson(_) => "not valid JSON".to_owned(),
            Self::MissingKey(k) => format!("key {k:?} is missing"),
            Self::UnknownKey(k) => format!("key {k:?} is not a column"),
            Self::Rejected(m) => format!("rejected by the agent: {}", mask_digits(m)),
            other => other.to_string(),
        }
    }
}

/// `m` with every run of digits replaced by `#`, so `element 3 is 1.5` and
/// `element 4 is 2.5` group together.
fn mask_digits(m: &str) -> String {
    let mut out = String::with_capacity(m.len());
    let mut in_digits = false;
    for c in m.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            // `1.5` is one number: a dot between digits stays inside it.
            if !(in_digits && c == '.') {
                in_digits = false;
            }
            if !(c == '.' && in_digits) {
                out.push(c);
            }
        }
    }
    out
}

/// Parses one text cell: an integer when it is one, else a finite float.
///
/// # Errors
///
/// [`RowProblem::NotANumber`] or [`RowProblem::NotFinite`], naming `at`.
pub fn parse_number(text: &str, at: impl FnOnce() -> String) -> Result<Number, RowProblem> {
    let text = text.trim();
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Number::from(i));
    }
    if let Ok(u) = text.parse::<u64>() {
        return Ok(Number::from(u));
    }
    let shown = || format!("{:?}", text.chars().take(40).collect::<String>());
    match text.parse::<f64>() {
        Ok(f) => Number::from_f64(f).ok_or_else(|| RowProblem::NotFinite {
            at: at(),
            text: shown(),
        }),
        Err(_) => Err(RowProblem::NotANumber {
            at: at(),
            text: shown(),
        }),
    }
}

/// Holds every row to one width: the one given (the model's, or the CSV
/// header's), else the first good row's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowWidth {
    width: Option<usize>,
}

impl RowWidth {
    /// Rows must have `width` values; `None`: as many as the first good row.
    #[must_use]
    pub fn new(width: Option<usize>) -> Self {
        Self { width }
    }

    /// Turns a good row of the wrong width into a rejected one.
    pub fn check(&mut self, row: &mut Row) {
        let Ok(cells) = &row.cells else { return };
        match self.width {
            Some(want) if cells.len() != want => {
                row.cells = Err(RowProblem::WrongWidth {
                    got: cells.len(),
                    want,
                });
            }
            Some(_) => {}
            None => self.width = Some(cells.len()),
        }
    }
}

/// The rows of an input file, pulled one at a time.
#[derive(Debug)]
pub struct RowReader {
    path: std::path::PathBuf,
    total: u64,
    source: Source,
}

#[derive(Debug)]
enum Source {
    Csv(CsvRows<BufReader<File>>),
    Jsonl(JsonlRows<BufReader<File>>),
}

impl RowReader {
    /// Opens `path` and, for CSV, reads its header.
    ///
    /// # Errors
    ///
    /// [`BatchError::Input`] when it cannot be opened or read,
    /// [`BatchError::InputShape`] for a CSV without a header row.
    pub fn open(path: &Path, format: InputFormat, limits: Limits) -> Result<Self, BatchError> {
        let io = |source| BatchError::Input {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let total = file.metadata().map_err(io)?.len();
        let reader = BufReader::with_capacity(64 << 10, file);
        let source = match format {
            InputFormat::Csv => {
                let rows = CsvRows::new(reader, limits).map_err(|e| match e {
                    csv_rows::HeaderError::Io(source) => io(source),
                    csv_rows::HeaderError::Missing => BatchError::InputShape {
                        path: path.to_owned(),
                        message: "no header row (the file is empty)".to_owned(),
                    },
                })?;
                Source::Csv(rows)
            }
            InputFormat::Jsonl => Source::Jsonl(JsonlRows::new(reader, limits)),
        };
        Ok(Self {
            path: path.to_owned(),
            total,
            source,
        })
    }

    /// The number of CSV columns; `None` for JSONL.
    #[must_use]
    pub fn header_width(&self) -> Option<usize> {
        match &self.source {
            Source::Csv(c) => Some(c.width()),
            Source::Jsonl(_) => None,
        }
    }

    /// The next data row; `None` at the end of the file.
    ///
    /// # Errors
    ///
    /// [`BatchError::Input`] when the file cannot be read.
    pub fn next_row(&mut self) -> Result<Option<Row>, BatchError> {
        let next = match &mut self.source {
            Source::Csv(c) => c.next_row(),
            Source::Jsonl(j) => j.next_row(),
        };
        next.map_err(|source| BatchError::Input {
            path: self.path.clone(),
            source,
        })
    }

    /// Bytes of the file read so far.
    #[must_use]
    pub fn position(&self) -> u64 {
        match &self.source {
            Source::Csv(c) => c.position(),
            Source::Jsonl(j) => j.position(),
        }
    }

    /// The file's size when opened.
    #[must_use]
    pub fn total_bytes(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(text: &str) -> Result<Number, RowProblem> {
        parse_number(text, || "column 1".to_owned())
    }

    #[test]
    fn integers_stay_integers_and_floats_stay_floats() {
        assert_eq!(number("7").unwrap().to_string(), "7");
        assert_eq!(number(" -3 ").unwrap().to_string(), "-3");
        assert_eq!(
            number("18446744073709551615").unwrap().as_u64(),
            Some(u64::MAX)
        );
        assert_eq!(number("1.5").unwrap().to_string(), "1.5");
        assert_eq!(number("1e3").unwrap().as_f64(), Some(1000.0));
    }

    #[test]
    fn text_empty_cells_and_non_finite_values_are_rejected() {
        assert!(matches!(number("abc"), Err(RowProblem::NotANumber { .. })));
        assert!(matches!(number(""), Err(RowProblem::NotANumber { .. })));
        assert!(matches!(number("NaN"), Err(RowProblem::NotFinite { .. })));
        assert!(matches!(number("-inf"), Err(RowProblem::NotFinite { .. })));
        let e = number("abc").unwrap_err();
        assert_eq!(e.to_string(), "column 1: \"abc\" is not a number");
    }

    #[test]
    fn the_first_good_row_sets_the_width_when_none_is_given() {
        let row = |index, n: usize| Row {
            index,
            line: index + 1,
            id: None,
            cells: Ok(vec![Number::from(1); n]),
        };
        let mut width = RowWidth::new(None);
        let mut bad = Row {
            cells: Err(RowProblem::Empty),
            ..row(0, 0)
        };
        width.check(&mut bad);
        let mut first = row(1, 3);
        width.check(&mut first);
        assert!(first.cells.is_ok());
        let mut wrong = row(2, 4);
        width.check(&mut wrong);
        assert_eq!(wrong.cells, Err(RowProblem::WrongWidth { got: 4, want: 3 }));
    }

    #[test]
    fn reasons_group_rows_whatever_their_cells() {
        let a = RowProblem::Rejected("input \"x\": element 3 is 1.5, expected int".into());
        let b = RowProblem::Rejected("input \"x\": element 12 is 0.25, expected int".into());
        assert_eq!(a.reason(), b.reason());
        assert_eq!(
            a.reason(),
            "rejected by the agent: input \"x\": element # is #, expected int"
        );
        let c = RowProblem::NotANumber {
            at: "column 2".into(),
            text: "x".into(),
        };
        assert_eq!(c.reason(), "a cell is not a number");
    }

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(
            InputFormat::from_path(Path::new("a.CSV")),
            Some(InputFormat::Csv)
        );
        assert_eq!(
            InputFormat::from_path(Path::new("a.ndjson")),
            Some(InputFormat::Jsonl)
        );
        assert_eq!(InputFormat::from_path(Path::new("a.txt")), None);
    }
}
