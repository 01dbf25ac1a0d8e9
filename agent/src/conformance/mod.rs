//! The ONNX backend conformance runner.
//!
//! A suite is a directory; every folder below it that holds `model.onnx` is one
//! test. A test loads the model with [`flotilla_runtime::Model::load`], runs each
//! `test_data_set_N`, and passes when every output of every data set matches
//! ([`compare`]). A model or data file that uses an element type the executor does
//! not hold makes the test *skipped*; anything else that goes wrong (an unsupported
//! operator, a kernel error, a wrong value, a panic) makes it *failed*.
//!
//! This module does not implement operators and does not download test data.

mod compare;
pub mod data;
mod floor;
mod report;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use flotilla_runtime::onnx::ModelProto;
use flotilla_runtime::{Model, ModelError, Value};
use prost::Message;

pub use compare::{compare, Tolerance};
pub use floor::Floor;
pub use report::{Report, Status, Suite, TestResult};

/// Runs every test folder under `dir` (sorted by path) whose name contains
/// `filter`.
///
/// # Errors
///
/// Only when `dir` cannot be listed; test failures are results, not errors.
pub fn run_suite(dir: &Path, filter: Option<&str>, tol: Tolerance) -> anyhow::Result<Suite> {
    let name = dir
        .file_name()
        .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
    let mut folders = Vec::new();
    find_tests(dir, &mut folders).with_context(|| format!("listing {}", dir.display()))?;
    folders.sort();
    let tests = folders
        .iter()
        .filter(|f| {
            filter.is_none_or(|p| {
                f.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(p))
            })
        })
        .map(|f| {
            std::panic::catch_unwind(|| run_test(f, tol)).unwrap_or_else(|_| TestResult {
                name: test_name(f),
                ops: Vec::new(),
                status: Status::Failed,
                reason: Some("the runner panicked".to_owned()),
            })
        })
        .collect();
    Ok(Suite {
        name,
        dir: dir.to_path_buf(),
        tests,
    })
}

fn find_tests(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if dir.join("model.onnx").is_file() {
        out.push(dir.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            find_tests(&path, out)?;
        }
    }
    Ok(())
}

fn test_name(folder: &Path) -> String {
    folder
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// Runs one test folder.
pub fn run_test(folder: &Path, tol: Tolerance) -> TestResult {
    let name = test_name(folder);
    let mut result = TestResult {
        name,
        ops: Vec::new(),
        status: Status::Failed,
        reason: None,
    };
    let bytes = match std::fs::read(folder.join("model.onnx")) {
        Ok(b) => b,
        Err(e) => return result.fail(format!("reading model.onnx: {e}")),
    };
    if let Ok(proto) = ModelProto::decode(&*bytes) {
        let mut ops: Vec<String> = proto
            .graph
            .iter()
            .flat_map(|g| g.node.iter())
            .map(|n| match n.domain() {
                "" | "ai.onnx" => n.op_type().to_owned(),
                d => format!("{d}.{}", n.op_type()),
            })
            .collect();
        ops.sort();
        ops.dedup();
        result.ops = ops;
    }
    let model = match Model::load(&bytes, Some(folder)) {
        Ok(m) => m,
        Err(
            e @ (ModelError::UnsupportedElementType { .. } | ModelError::NonTensorValue { .. }),
        ) => return result.skip(e.to_string()),
        Err(e) => return result.fail(format!("load: {e}")),
    };
    let mut sets: Vec<PathBuf> = match std::fs::read_dir(folder) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_"))
            })
            .collect(),
        Err(e) => return result.fail(format!("listing data sets: {e}")),
    };
    sets.sort();
    if sets.is_empty() {
        return result.fail("no test_data_set_* folder".to_owned());
    }
    for set in &sets {
        if let Err((skip, reason)) = run_data_set(&model, set, tol) {
            let set_name = test_name(set);
            let reason = format!("{set_name}: {reason}");
            return if skip {
                result.skip(reason)
            } else {
                result.fail(reason)
            };
        }
    }
    result.status = Status::Passed;
    result
}

/// Runs one data set; the error says whether the test is skipped (unsupported
/// data types) or failed, and why.
fn run_data_set(model: &Model, set: &Path, tol: Tolerance) -> Result<(), (bool, String)> {
    let mut inputs = HashMap::new();
    for (j, spec) in model.inputs().iter().enumerate() {
        let path = set.join(format!("input_{j}.pb"));
        if !path.exists() {
            break;
        }
        let (stored, value) = data::read_value(&path, spec.kind)
            .map_err(|e| (e.is_unsupported_type(), e.to_string()))?;
        // Data files name their tensor; fall back to position when they do not
        // name a graph input.
        let name = if model.inputs().iter().any(|s| s.name == stored) {
            stored
        } else {
            spec.name.clone()
        };
        inputs.insert(name, value);
    }
    let outputs = model
        .run_values(inputs)
        .map_err(|e| (false, e.to_string()))?;
    for (j, spec) in model.outputs().iter().enumerate() {
        let path = set.join(format!("output_{j}.pb"));
        let (_, expected) = data::read_value(&path, spec.kind)
            .map_err(|e| (e.is_unsupported_type(), e.to_string()))?;
        let actual = outputs.get(j).map(|(_, v)| v).unwrap_or(&Value::None);
        compare(actual, &expected, tol)
            .map_err(|m| (false, format!("output {:?}: {m}", spec.name)))?;
    }
    Ok(())
}
