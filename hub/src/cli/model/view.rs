//! How model answers print as text. JSON output is the API's own bodies,
//! unchanged; this file only shapes the text form.

use serde::Serialize;

use super::super::text::{human_bytes, table};
use super::super::Report;
use crate::api::types::{ModelView, Page, TensorView, VersionStatus, VersionView};

fn tensor(t: &TensorView) -> String {
    match &t.shape {
        Some(dims) => format!("{} {}[{}]", t.name, t.datatype, dims.join(",")),
        None => format!("{} {}[?]", t.name, t.datatype),
    }
}

fn tensors(ts: &[TensorView]) -> String {
    if ts.is_empty() {
        "(none)".into()
    } else {
        ts.iter().map(tensor).collect::<Vec<_>>().join(", ")
    }
}

fn status(s: VersionStatus) -> &'static str {
    match s {
        VersionStatus::Active => "active",
        VersionStatus::Archived => "archived",
    }
}

fn pairs<V: std::fmt::Display>(m: &std::collections::BTreeMap<String, V>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The long text form of a version.
pub(crate) fn version_text(v: &VersionView) -> String {
    let mut s = format!("{}:{}  {}\n", v.name, v.version, status(v.status));
    if !v.description.is_empty() {
        s += &format!("  description: {}\n", v.description);
    }
    s += &format!(
        "  file:        {}, {} ({} bytes)\n  sha256:      {}\n",
        v.file_name,
        human_bytes(v.size),
        v.size,
        v.sha256
    );
    s += &format!(
        "  chunks:      {} ({} already stored for earlier versions)\n",
        v.chunks, v.chunks_reused
    );
    s += &format!("  inputs:      {}\n", tensors(&v.inputs));
    s += &format!("  outputs:     {}\n", tensors(&v.outputs));
    s += &format!(
        "  target:      {} (manifest sha256 {})\n",
        v.target, v.manifest_sha256
    );
    if !v.tags.is_empty() {
        s += &format!("  tags:        {}\n", pairs(&v.tags));
    }
    if !v.metrics.is_empty() {
        s += &format!("  metrics:     {}\n", pairs(&v.metrics));
    }
    let l = &v.lineage;
    let mut lineage = Vec::new();
    if let Some(r) = &l.source_run {
        lineage.push(format!("run {r}"));
    }
    if let Some(d) = &l.dataset_digest {
        lineage.push(format!("dataset {d}"));
    }
    if let Some(p) = l.parent_version {
        lineage.push(format!("parent version {p}"));
    }
    if !lineage.is_empty() {
        s += &format!("  lineage:     {}\n", lineage.join(", "));
    }
    s += &format!(
        "  drift:       {}\n",
        if v.has_drift_baseline {
            "baseline from reference dataset"
        } else {
            "no baseline (register with --dataset FILE.csv for one)"
        }
    );
    if !v.referenced_by.is_empty() {
        s += &format!("  deployed in: {}\n", v.referenced_by.join(", "));
    }
    s += &format!("  created:     {} by {}", v.created_at, v.created_by);
    if !v.reason.is_empty() {
        s += &format!(": {}", v.reason);
    }
    s
}

impl Report for VersionView {
    fn text(&self) -> String {
        version_text(self)
    }
}

/// A version just registered.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(crate) struct Registered(pub(crate) VersionView);

impl Report for Registered {
    fn text(&self) -> String {
        format!("registered {}", version_text(&self.0))
    }
}

/// A version after a change (tag, untag, archive), with what was done.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(crate) struct Changed {
    /// The version as the hub now has it.
    pub(crate) version: VersionView,
    /// `tagged`, `archived`, …; text only.
    #[serde(skip)]
    pub(crate) what: &'static str,
}

impl Report for Changed {
    fn text(&self) -> String {
        let v = &self.version;
        let tags = if v.tags.is_empty() {
            "(no tags)".to_string()
        } else {
            pairs(&v.tags)
        };
        format!(
            "{} {}:{} ({}); tags: {tags}",
            self.what,
            v.name,
            v.version,
            status(v.status)
        )
    }
}

fn more(next: &Option<String>) -> String {
    match next {
        Some(c) => format!("\n(more: add --cursor {c}, or --all for everything)"),
        None => String::new(),
    }
}

/// Versions as a table.
pub(crate) fn versions_table(items: &[VersionView]) -> String {
    table(
        &["VERSION", "STATUS", "SIZE", "CREATED", "BY", "TAGS"],
        items
            .iter()
            .map(|v| {
                vec![
                    v.version.to_string(),
                    status(v.status).to_string(),
                    human_bytes(v.size),
                    v.created_at.clone(),
                    v.created_by.clone(),
                    pairs(&v.tags),
                ]
            })
            .collect(),
    )
}

impl Report for Page<ModelView> {
    fn text(&self) -> String {
        if self.items.is_empty() {
            return "no models match".into();
        }
        table(
            &["NAME", "LATEST", "VERSIONS", "CREATED"],
            self.items
                .iter()
                .map(|m| {
                    vec![
                        m.name.clone(),
                        m.latest_version.to_string(),
                        m.versions.to_string(),
                        m.created_at.clone(),
                    ]
                })
                .collect(),
        ) + &more(&self.next_cursor)
    }
}

impl Report for Page<VersionView> {
    fn text(&self) -> String {
        if self.items.is_empty() {
            return "no versions match".into();
        }
        versions_table(&self.items) + &more(&self.next_cursor)
    }
}

/// `model show NAME`: the model and all its versions.
#[derive(Debug, Serialize)]
pub(crate) struct ModelDetail {
    /// The model.
    pub(crate) model: ModelView,
    /// Its versions, oldest first as the hub lists them.
    pub(crate) versions: Vec<VersionView>,
}

impl Report for ModelDetail {
    fn text(&self) -> String {
        let m = &self.model;
        let mut s = format!(
            "{}  {} version(s), latest {}, created {}\n",
            m.name, m.versions, m.latest_version, m.created_at
        );
        if self.versions.is_empty() {
            s += "  (no versions left)";
        } else {
            s += &versions_table(&self.versions);
            s += &format!("\n(details of one: flotilla model show {}:VERSION)", m.name);
        }
        s
    }
}
