//! JSONL input: one JSON array or object per line (see [`super`] for the shapes
//! accepted).
//!
//! Design: a line is read with a bound ([`Limits::max_line_bytes`]); a longer
//! one is skipped to its newline without being held, and becomes a rejected
//! row. Objects are read key by key in the order written, so the columns of
//! named-number objects follow the first such line.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, Read};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

use super::{Row, RowProblem};
use crate::batch::Limits;

/// The data rows of a JSONL file.
#[derive(Debug)]
pub struct JsonlRows<R> {
    reader: R,
    limits: Limits,
    buf: Vec<u8>,
    line: u64,
    next_index: u64,
    position: u64,
    /// The keys of the first named-number object, in the order written there.
    columns: Option<Vec<String>>,
}

impl<R: BufRead> JsonlRows<R> {
    /// Rows of `reader`, from its start.
    pub fn new(reader: R, limits: Limits) -> Self {
        Self {
            reader,
            limits,
            buf: Vec::new(),
            line: 0,
            next_index: 0,
            position: 0,
            columns: None,
        }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next data row; `None` at the end. Blank lines are skipped.
    ///
    /// # Errors
    ///
    /// Reading the underlying file failed.
    pub fn next_row(&mut self) -> std::io::Result<Option<Row>> {
        loop {
            self.buf.clear();
            let limit = self.limits.max_line_bytes;
            let bound = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
            let n = (&mut self.reader)
                .take(bound)
                .read_until(b'\n', &mut self.buf)?;
            if n == 0 {
                return Ok(None);
            }
            self.position += n as u64;
            self.line += 1;
            let cells = if self.buf.len() > limit && self.buf.last() != Some(&b'\n') {
                self.position += skip_line(&mut self.reader)?;
                Err(RowProblem::TooLong { limit })
            } else {
                let text = self.buf.trim_ascii();
                if text.is_empty() {
                    continue;
                }
                Ok(())
            };
            let index = self.next_index;
            self.next_index += 1;
            let (id, cells) = match cells {
                Ok(()) => self.parse_line(),
                Err(e) => (None, Err(e)),
            };
            return Ok(Some(Row {
                index,
                line: self.line,
                id,
                cells,
            }));
        }
    }

    fn parse_line(&mut self) -> (Option<Value>, Result<Vec<Number>, RowProblem>) {
        let text = self.buf.trim_ascii();
        let parsed = match serde_json::from_slice::<Line>(text) {
            Ok(p) => p,
            Err(e) => return (None, Err(RowProblem::NotJson(json_message(&e)))),
        };
        match parsed {
            Line::Array(values) => (None, numbers(&values, |i| format!("value {}", i + 1))),
            Line::Other(what) => (
                None,
                Err(RowProblem::NotARow(format!(
                    "{what} is not a row; expected an array of numbers or an object"
                ))),
            ),
            Line::Object(pairs) => self.object(pairs),
        }
    }

    fn object(
        &mut self,
        pairs: Vec<(String, Value)>,
    ) -> (Option<Value>, Result<Vec<Number>, RowProblem>) {
        let mut by_key: HashMap<&str, &Value> = HashMap::with_capacity(pairs.len());
        for (k, v) in &pairs {
            if by_key.insert(k.as_str(), v).is_some() {
                let id = by_key.get("id").map(|v| (*v).clone());
                return (
                    id,
                    Err(RowProblem::NotARow(format!("key {k:?} appears twice"))),
                );
            }
        }
        let id = by_key.remove("id").cloned();
        if let Some(features) = by_key.get("features") {
            let cells = match features {
                Value::Array(values) => numbers(values, |i| format!("features value {}", i + 1)),
                _ => Err(RowProblem::NotARow(
                    "\"features\" is not an array".to_owned(),
                )),
            };
            return (id, cells);
        }
        let columns = self.columns.get_or_insert_with(|| {
            pairs
                .iter()
                .map(|(k, _)| k.clone())
                .filter(|k| k != "id")
                .collect()
        });
        if by_key.len() > self.limits.max_row_values {
            let limit = self.limits.max_row_values;
            return (id, Err(RowProblem::TooWide { limit }));
        }
        let mut cells = Vec::with_capacity(columns.len());
        for column in columns.iter() {
            let Some(value) = by_key.remove(column.as_str()) else {
                return (id, Err(RowProblem::MissingKey(column.clone())));
            };
            match number(value, || format!("key {column:?}")) {
                Ok(n) => cells.push(n),
                Err(e) => return (id, Err(e)),
            }
        }
        if let Some((&extra, _)) = by_key.iter().min_by_key(|(k, _)| **k) {
            return (id, Err(RowProblem::UnknownKey(extra.to_owned())));
        }
        (id, Ok(cells))
    }
}

/// Consumes the rest of an over-long line; returns the bytes consumed.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<u64> {
    let mut skipped = 0u64;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(skipped);
        }
        let (used, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        reader.consume(used);
        skipped += used as u64;
        if done {
            return Ok(skipped);
        }
    }
}

/// serde_json's message, shortened.
fn json_message(e: &serde_json::Error) -> String {
    format!("{e}").chars().take(120).collect()
}

fn numbers(values: &[Value], at: impl Fn(usize) -> String) -> Result<Vec<Number>, RowProblem> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| number(v, || at(i)))
        .collect()
}

fn number(v: &Value, at: impl FnOnce() -> String) -> Result<Number, RowProblem> {
    match v {
        Value::Number(n) => Ok(n.clone()),
        other => Err(RowProblem::NotANumber {
            at: at(),
            text: other.to_string().chars().take(40).collect(),
        }),
    }
}

/// One JSONL line, objects with their keys in written order.
#[derive(Debug)]
enum Line {
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
    /// Anything else, named (`a string`, `null`, ...).
    Other(&'static str),
}

impl<'de> serde::Deserialize<'de> for Line {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LineVisitor)
    }
}

struct LineVisitor;

impl<'de> Visitor<'de> for LineVisitor {
    type Value = Line;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array or object")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Line, A::Error> {
        let mut values = Vec::new();
        while let Some(v) = seq.next_element::<Value>()? {
            values.push(v);
        }
        Ok(Line::Array(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Line, A::Error> {
        let mut pairs = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            pairs.push((k, v));
        }
        Ok(Line::Object(pairs))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Line, E> {
        Ok(Line::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Line, E> {
        Ok(Line::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Line, E> {
        Ok(Line::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Line, E> {
        Ok(Line::Other("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Line, E> {
        Ok(Line::Other("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Line, E> {
        Ok(Line::Other("null"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_with(text: &str, limits: Limits) -> Vec<Row> {
        let mut r = JsonlRows::new(text.as_bytes(), limits);
        let mut out = Vec::new();
        while let Some(row) = r.next_row().unwrap() {
            out.push(row);
        }
        assert_eq!(r.position(), text.len() as u64);
        out
    }

    fn rows(text: &str) -> Vec<Row> {
        rows_with(text, Limits::default())
    }

    fn values(row: &Row) -> Vec<String> {
        row.cells
            .as_ref()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn problem(row: &Row) -> String {
        row.cells.as_ref().unwrap_err().to_string()
    }

    #[test]
    fn arrays_and_features_objects_are_rows_and_ids_are_kept() {
        let r = rows("[1, 2.5, -3]\n{\"id\": \"a7\", \"features\": [4, 5, 6], \"note\": 1}\n");
        assert_eq!(values(&r[0]), ["1", "2.5", "-3"]);
        assert_eq!(r[0].id, None);
        assert_eq!(values(&r[1]), ["4", "5", "6"]);
        assert_eq!(r[1].id, Some(Value::from("a7")));
    }

    #[test]
    fn named_objects_follow_the_first_objects_key_order() {
        let r = rows(
            "{\"id\": 1, \"b\": 2, \"a\": 1}\n{\"a\": 3, \"b\": 4}\n{\"b\": 5}\n{\"a\": 1, \"b\": 2, \"c\": 3}\n",
        );
        assert_eq!(values(&r[0]), ["2", "1"]);
        assert_eq!(r[0].id, Some(Value::from(1)));
        assert_eq!(values(&r[1]), ["4", "3"]);
        assert_eq!(r[2].cells, Err(RowProblem::MissingKey("a".into())));
        assert_eq!(r[3].cells, Err(RowProblem::UnknownKey("c".into())));
    }

    #[test]
    fn blank_lines_are_skipped_and_not_numbered() {
        let r = rows("\n[1]\n   \n\r\n[2]\n\n[3]");
        let seen: Vec<(u64, u64)> = r.iter().map(|r| (r.index, r.line)).collect();
        assert_eq!(seen, [(0, 2), (1, 5), (2, 7)]);
        assert_eq!(values(&r[2]), ["3"]);
    }

    #[test]
    fn lines_that_are_not_rows_are_rejected_with_a_reason() {
        let r = rows(
            "[1, \"x\"]\nnot json\n\"text\"\n{\"features\": 3}\n{\"a\": 1, \"a\": 2}\n[1, null]\n[[1]]\n",
        );
        assert_eq!(problem(&r[0]), "value 2: \"x\" is not a number");
        assert!(
            problem(&r[1]).starts_with("not valid JSON"),
            "{}",
            problem(&r[1])
        );
        assert!(problem(&r[2]).starts_with("a string is not a row"));
        assert_eq!(problem(&r[3]), "\"features\" is not an array");
        assert_eq!(problem(&r[4]), "key \"a\" appears twice");
        assert!(matches!(r[5].cells, Err(RowProblem::NotANumber { .. })));
        assert!(matches!(r[6].cells, Err(RowProblem::NotANumber { .. })));
        let numbered: Vec<u64> = r.iter().map(|r| r.index).collect();
        assert_eq!(numbered, [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn an_over_long_line_is_one_rejected_row_and_reading_goes_on() {
        let limits = Limits {
            max_line_bytes: 16,
            ..Limits::default()
        };
        let long = format!("[{}1]", "1, ".repeat(40));
        let text = format!("[1, 2]\n{long}\n[3, 4]\n");
        let r = rows_with(&text, limits);
        assert_eq!(r.len(), 3);
        assert_eq!(r[1].cells, Err(RowProblem::TooLong { limit: 16 }));
        assert_eq!((r[2].index, r[2].line), (2, 3));
        assert_eq!(values(&r[2]), ["3", "4"]);
    }
}
