//! Search filters on versions: `tag=KEY=VALUE` and `metric=NAME>=NUMBER`, and
//! the validation of names, tags and metrics that registration shares.

use std::collections::BTreeMap;

use crate::api::types::VersionView;

/// One filter over versions.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// The tag `key` has value `value`.
    Tag {
        /// Tag key.
        key: String,
        /// Tag value.
        value: String,
    },
    /// The metric compares true against `value`.
    Metric {
        /// Metric name.
        name: String,
        /// Comparison.
        op: Cmp,
        /// Right-hand side.
        value: f64,
    },
}

/// Comparison operators of metric filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `>=`
    Ge,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `<`
    Lt,
    /// `=`
    Eq,
}

impl Filter {
    /// Parses `KEY=VALUE` as a tag filter.
    pub fn tag(s: &str) -> Result<Self, String> {
        let (key, value) = parse_tag(s)?;
        Ok(Filter::Tag { key, value })
    }

    /// Parses `NAME>=NUMBER` (or `<=`, `>`, `<`, `=`) as a metric filter.
    pub fn metric(s: &str) -> Result<Self, String> {
        for (token, op) in [
            (">=", Cmp::Ge),
            ("<=", Cmp::Le),
            (">", Cmp::Gt),
            ("<", Cmp::Lt),
            ("=", Cmp::Eq),
        ] {
            if let Some((name, value)) = s.split_once(token) {
                let value: f64 = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("metric filter {s:?}: {value:?} is not a number"))?;
                check_key("metric", name.trim())?;
                return Ok(Filter::Metric {
                    name: name.trim().to_string(),
                    op,
                    value,
                });
            }
        }
        Err(format!(
            "metric filter {s:?} must look like NAME>=NUMBER (operators >= <= > < =)"
        ))
    }

    /// True when `v` passes.
    pub fn matches(&self, v: &VersionView) -> bool {
        match self {
            Filter::Tag { key, value } => v.tags.get(key) == Some(value),
            Filter::Metric { name, op, value } => v.metrics.get(name).is_some_and(|m| match op {
                Cmp::Ge => m >= value,
                Cmp::Le => m <= value,
                Cmp::Gt => m > value,
                Cmp::Lt => m < value,
                Cmp::Eq => m == value,
            }),
        }
    }
}

/// Checks a model name: 1–128 of `A-Z a-z 0-9 - _ .`, not starting with `.`.
pub fn check_model_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("model name {name:?} must be 1-128 characters of A-Z a-z 0-9 - _ . and not start with '.'"))
    }
}

/// Checks an uploaded file's name: a plain name, no directories.
pub fn check_file_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(format!("file_name {name:?} must be a plain file name without directories, '..' or control characters"))
    }
}

fn check_key(what: &str, key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} key {key:?} must be 1-128 characters of A-Z a-z 0-9 - _ . / :"
        ))
    }
}

/// Parses `KEY=VALUE`.
pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(format!("tag {s:?} must look like KEY=VALUE"));
    };
    check_tags(&[(k.to_string(), v.to_string())].into())?;
    Ok((k.to_string(), v.to_string()))
}

/// Checks tags.
pub fn check_tags(tags: &BTreeMap<String, String>) -> Result<(), String> {
    if tags.len() > 64 {
        return Err(format!("{} tags given; at most 64 are allowed", tags.len()));
    }
    for (k, v) in tags {
        check_key("tag", k)?;
        if v.len() > 256 || v.chars().any(char::is_control) {
            return Err(format!(
                "tag {k}: value must be at most 256 characters without control characters"
            ));
        }
    }
    Ok(())
}

/// Checks metrics.
pub fn check_metrics(metrics: &BTreeMap<String, f64>) -> Result<(), String> {
    if metrics.len() > 64 {
        return Err(format!(
            "{} metrics given; at most 64 are allowed",
            metrics.len()
        ));
    }
    for (k, v) in metrics {
        check_key("metric", k)?;
        if !v.is_finite() {
            return Err(format!("metric {k} must be a finite number"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_reject_bad_syntax() {
        assert_eq!(
            Filter::tag("stage=prod").unwrap(),
            Filter::Tag {
                key: "stage".into(),
                value: "prod".into()
            }
        );
        assert!(Filter::tag("stage").is_err());
        assert!(Filter::tag("=prod").is_err());
        assert_eq!(
            Filter::metric("auc>=0.9").unwrap(),
            Filter::Metric {
                name: "auc".into(),
                op: Cmp::Ge,
                value: 0.9
            }
        );
        assert_eq!(
            Filter::metric("loss<1").unwrap(),
            Filter::Metric {
                name: "loss".into(),
                op: Cmp::Lt,
                value: 1.0
            }
        );
        assert!(Filter::metric("auc>high").is_err());
        assert!(Filter::metric("auc").is_err());
    }

    #[test]
    fn names_with_paths_are_refused() {
        for bad in [
            "../x.onnx",
            "/etc/passwd",
            "a/b.onnx",
            "..",
            "a\\b",
            "a\nb",
            "",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_file_name("model v2.onnx").is_ok());
        assert!(check_model_name("fraud-detector_v2.1").is_ok());
        assert!(check_model_name(".hidden").is_err());
        assert!(check_model_name("a/b").is_err());
    }
}
