//! Command-line syntax of model arguments: `NAME`, `NAME:VERSION`, `KEY=VALUE`
//! tags, `KEY=NUMBER` metrics and `NAME>=NUMBER` metric filters.
//!
//! The rules are the registry's own ([`crate::registry::filter`]), applied here
//! so a typo fails at once with exit code 2 instead of after a multi-GiB
//! upload. The hub checks everything again; this is a convenience, not a guard.

use std::fmt;
use std::str::FromStr;

use crate::registry::filter::{check_metrics, check_model_name, check_tags, parse_tag, Filter};

/// One model version: `NAME:VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VersionRef {
    /// Model name.
    pub(crate) name: String,
    /// Version number.
    // invariant: >= 1.
    pub(crate) version: u64,
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.version)
    }
}

impl VersionRef {
    /// `/api/v1/models/{name}/versions/{version}`.
    pub(crate) fn path(&self) -> String {
        format!(
            "/api/v1/models/{}/versions/{}",
            super::super::client::segment(&self.name),
            self.version
        )
    }
}

/// A model or one of its versions: `NAME` or `NAME:VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ModelRef {
    /// The model.
    Model(String),
    /// One version.
    Version(VersionRef),
}

fn version_number(name: &str, v: &str) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{name}:{v}: the version must be a number from 1, as in {name}:3"
        )),
    }
}

impl FromStr for ModelRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None => {
                check_model_name(s)?;
                Ok(ModelRef::Model(s.to_string()))
            }
            Some((name, v)) => {
                check_model_name(name)?;
                Ok(ModelRef::Version(VersionRef {
                    name: name.to_string(),
                    version: version_number(name, v)?,
                }))
            }
        }
    }
}

impl FromStr for VersionRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<ModelRef>()? {
            ModelRef::Version(v) => Ok(v),
            ModelRef::Model(name) => Err(format!(
                "{name:?} names a model; say which version, as in {name}:3 \
                 (`flotilla model versions {name}` lists them)"
            )),
        }
    }
}

/// Parses a model name (for `--name`).
pub(crate) fn model_name(s: &str) -> Result<String, String> {
    check_model_name(s)?;
    Ok(s.to_string())
}

/// Parses a `KEY=VALUE` tag.
pub(crate) fn tag(s: &str) -> Result<(String, String), String> {
    parse_tag(s)
}

/// Parses a tag key (for `untag`).
pub(crate) fn tag_key(s: &str) -> Result<String, String> {
    if s.contains('=') {
        return Err(format!("{s:?}: untag takes tag KEYS, not KEY=VALUE"));
    }
    check_tags(&[(s.to_string(), String::new())].into())?;
    Ok(s.to_string())
}

/// Parses a `KEY=NUMBER` metric.
pub(crate) fn metric(s: &str) -> Result<(String, f64), String> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(format!(
            "metric {s:?} must look like KEY=NUMBER, e.g. auc=0.93"
        ));
    };
    let value: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("metric {s:?}: {v:?} is not a number"))?;
    let k = k.trim().to_string();
    check_metrics(&[(k.clone(), value)].into())?;
    Ok((k, value))
}

/// A tag filter, `KEY=VALUE`, checked and kept as typed for the query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TagFilter(pub(crate) String);

/// A metric filter, `NAME>=NUMBER` (or `<=`, `>`, `<`, `=`), checked and kept
/// as typed (trimmed) for the query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetricFilter(pub(crate) String);

/// Parses a tag filter.
pub(crate) fn tag_filter(s: &str) -> Result<TagFilter, String> {
    Filter::tag(s)?;
    Ok(TagFilter(s.to_string()))
}

/// Parses a metric filter.
pub(crate) fn metric_filter(s: &str) -> Result<MetricFilter, String> {
    match Filter::metric(s)? {
        Filter::Metric { value, .. } if !value.is_finite() => {
            Err(format!("metric filter {s:?}: the number must be finite"))
        }
        _ => Ok(MetricFilter(s.trim().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_colon_version_parses() {
        let v: VersionRef = "fraud-v2.1:12".parse().unwrap();
        assert_eq!(
            v,
            VersionRef {
                name: "fraud-v2.1".into(),
                version: 12
            }
        );
        assert_eq!(v.to_string(), "fraud-v2.1:12");
        assert_eq!(v.path(), "/api/v1/models/fraud-v2.1/versions/12");
    }

    #[test]
    fn bare_name_is_a_model_and_not_a_version() {
        assert_eq!(
            "fraud".parse::<ModelRef>().unwrap(),
            ModelRef::Model("fraud".into())
        );
        let e = "fraud".parse::<VersionRef>().unwrap_err();
        assert!(e.contains("fraud:3"), "{e}");
    }

    #[test]
    fn bad_versions_and_names_are_refused() {
        for bad in [
            "fraud:",
            "fraud:0",
            "fraud:-1",
            "fraud:v2",
            "fraud:1:2",
            ":3",
            "../x:1",
            "a/b:1",
            ".x:1",
        ] {
            assert!(bad.parse::<VersionRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_need_a_key_and_an_equals_sign() {
        assert_eq!(tag("stage=prod").unwrap(), ("stage".into(), "prod".into()));
        assert_eq!(tag("note=a=b").unwrap(), ("note".into(), "a=b".into()));
        assert!(tag("stage").is_err());
        assert!(tag("=prod").is_err());
        assert!(tag("st age=x").is_err());
    }

    #[test]
    fn untag_takes_keys_only() {
        assert_eq!(tag_key("stage").unwrap(), "stage");
        assert!(tag_key("stage=prod").is_err());
        assert!(tag_key("").is_err());
    }

    #[test]
    fn metrics_are_finite_numbers() {
        assert_eq!(metric("auc=0.93").unwrap(), ("auc".into(), 0.93));
        assert_eq!(metric("loss=-1e-3").unwrap(), ("loss".into(), -0.001));
        for bad in ["auc", "auc=high", "auc=NaN", "auc=inf", "=1"] {
            assert!(metric(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metric_filters_take_every_operator_and_refuse_the_rest() {
        for ok in [
            "acc>=0.9",
            "acc<=0.9",
            "acc>0.9",
            "acc<0.9",
            "acc=1",
            " acc >= 0.9 ",
        ] {
            assert!(metric_filter(ok).is_ok(), "{ok}");
        }
        assert_eq!(metric_filter(" acc>=0.9 ").unwrap().0, "acc>=0.9");
        for bad in ["acc", "acc>=high", "acc=>0.9", ">=0.9", "acc>=inf"] {
            assert!(metric_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tag_filters_are_key_equals_value() {
        assert_eq!(tag_filter("stage=prod").unwrap().0, "stage=prod");
        assert!(tag_filter("stage").is_err());
    }
}
