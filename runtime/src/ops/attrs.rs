//! [`Attrs`]: a node's attributes, decoded once at load time.
//!
//! Kernels read attributes by name with a default, as the operator schemas state
//! them. A present attribute of the wrong type is an error, not a silent default.
//! This module does not know which attributes an operator has.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::error::ModelError;
use crate::onnx::{attribute_proto::AttributeType, AttributeProto};
use crate::ops::OpError;
use crate::plan::Subgraph;
use crate::tensor::Tensor;
use crate::tensor_io::decode_tensor;

/// One decoded attribute value.
#[derive(Debug, Clone)]
pub(crate) enum Attr {
    Float(f32),
    Int(i64),
    String(String),
    Tensor(Tensor),
    /// A subgraph (If/Loop/Scan/SequenceMap bodies): `None` as decoded here,
    /// the planned body once [`crate::plan`] has planned it.
    Graph(Option<Arc<Subgraph>>),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<String>),
    /// Types no kernel reads (sparse tensors, type protos, lists of tensors/graphs).
    Other,
}

/// A node's attributes by name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attrs {
    map: HashMap<String, Attr>,
}

impl Attrs {
    /// Decodes a node's attribute list; tensor attributes become [`Tensor`]s.
    pub(crate) fn decode(
        protos: &[AttributeProto],
        base_dir: Option<&Path>,
    ) -> Result<Self, ModelError> {
        let mut map = HashMap::with_capacity(protos.len());
        for a in protos {
            map.insert(a.name().to_owned(), decode_one(a, base_dir)?);
        }
        Ok(Self { map })
    }

    /// Sets an attribute (the planner's rewrites: fusions, pre-transposed weights).
    pub(crate) fn set(&mut self, name: &str, value: Attr) {
        self.map.insert(name.to_owned(), value);
    }

    /// Removes an attribute.
    pub(crate) fn remove(&mut self, name: &str) {
        self.map.remove(name);
    }

    /// True if the attribute is present.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// An int attribute, or `default` when absent.
    pub(crate) fn int(&self, name: &str, default: i64) -> Result<i64, OpError> {
        match self.map.get(name) {
            None => Ok(default),
            Some(Attr::Int(v)) => Ok(*v),
            Some(other) => Err(wrong(name, "int", other)),
        }
    }

    /// An int attribute, if present.
    pub(crate) fn opt_int(&self, name: &str) -> Result<Option<i64>, OpError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Attr::Int(v)) => Ok(Some(*v)),
            Some(other) => Err(wrong(name, "int", other)),
        }
    }

    /// A float attribute, or `default` when absent.
    pub(crate) fn float(&self, name: &str, default: f32) -> Result<f32, OpError> {
        match self.map.get(name) {
            None => Ok(default),
            Some(Attr::Float(v)) => Ok(*v),
            Some(Attr::Int(v)) => Ok(*v as f32),
            Some(other) => Err(wrong(name, "float", other)),
        }
    }

    /// An ints attribute, if present.
    pub(crate) fn ints(&self, name: &str) -> Result<Option<&[i64]>, OpError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Attr::Ints(v)) => Ok(Some(v)),
            Some(other) => Err(wrong(name, "ints", other)),
        }
    }

    /// A floats attribute, if present.
    pub(crate) fn floats(&self, name: &str) -> Result<Option<&[f32]>, OpError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Attr::Floats(v)) => Ok(Some(v)),
            Some(other) => Err(wrong(name, "floats", other)),
        }
    }

    /// A string attribute, or `default` when absent.
    pub(crate) fn string<'a>(&'a self, name: &str, default: &'a str) -> Result<&'a str, OpError> {
        match self.map.get(name) {
            None => Ok(default),
            Some(Attr::String(v)) => Ok(v),
            Some(other) => Err(wrong(name, "string", other)),
        }
    }

    /// A strings attribute, if present.
    pub(crate) fn strings(&self, name: &str) -> Result<Option<&[String]>, OpError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Attr::Strings(v)) => Ok(Some(v)),
            Some(other) => Err(wrong(name, "strings", other)),
        }
    }

    /// A planned graph attribute, which must be present.
    pub(crate) fn graph(&self, name: &str) -> Result<&Subgraph, OpError> {
        match self.map.get(name) {
            None => Err(OpError::new(format!("attribute {name:?} is required"))),
            Some(Attr::Graph(Some(g))) => Ok(g),
            Some(Attr::Graph(None)) => Err(OpError::new(format!(
                "internal: attribute {name:?} was not planned"
            ))),
            Some(other) => Err(wrong(name, "graph", other)),
        }
    }

    /// A tensor attribute, if present.
    pub(crate) fn tensor(&self, name: &str) -> Result<Option<&Tensor>, OpError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Attr::Tensor(v)) => Ok(Some(v)),
            Some(other) => Err(wrong(name, "tensor", other)),
        }
    }
}

fn wrong(name: &str, want: &str, got: &Attr) -> OpError {
    let got = match got {
        Attr::Float(_) => "float",
        Attr::Int(_) => "int",
        Attr::String(_) => "string",
        Attr::Tensor(_) => "tensor",
        Attr::Graph(_) => "graph",
        Attr::Floats(_) => "floats",
        Attr::Ints(_) => "ints",
        Attr::Strings(_) => "strings",
        Attr::Other => "another type",
    };
    OpError::new(format!("attribute {name:?} should be {want}, is {got}"))
}

fn decode_one(a: &AttributeProto, base_dir: Option<&Path>) -> Result<Attr, ModelError> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let ty = match a.r#type {
        Some(_) => a.r#type(),
        // IR version 1 models may omit the type: infer it from the field set.
        None if a.f.is_some() => AttributeType::Float,
        None if a.i.is_some() => AttributeType::Int,
        None if a.s.is_some() => AttributeType::String,
        None if a.t.is_some() => AttributeType::Tensor,
        None if a.g.is_some() => AttributeType::Graph,
        None if !a.floats.is_empty() => AttributeType::Floats,
        None if !a.ints.is_empty() => AttributeType::Ints,
        None if !a.strings.is_empty() => AttributeType::Strings,
        None => AttributeType::Undefined,
    };
    Ok(match ty {
        AttributeType::Float => Attr::Float(a.f()),
        AttributeType::Int => Attr::Int(a.i()),
        AttributeType::String => Attr::String(text(a.s())),
        AttributeType::Tensor => match &a.t {
            Some(t) => Attr::Tensor(decode_tensor(t, base_dir)?),
            None => Attr::Other,
        },
        AttributeType::Graph => match &a.g {
            Some(_) => Attr::Graph(None),
            None => Attr::Other,
        },
        AttributeType::Floats => Attr::Floats(a.floats.clone()),
        AttributeType::Ints => Attr::Ints(a.ints.clone()),
        AttributeType::Strings => Attr::Strings(a.strings.iter().map(|s| text(s)).collect()),
        _ => Attr::Other,
    })
}
