//! The execution plan of a graph, built once per model load.
//!
//! Planning decodes the initializers into tensors, resolves every node to its
//! kernel (an unknown operator is a load-time error), orders the nodes
//! topologically, drops nodes no graph output depends on, folds nodes whose inputs
//! are all constants, and assigns every remaining intermediate value a slot that is
//! freed right after its last use.
//!
//! This module does not run anything except constant folding; [`crate::exec`] runs
//! a [`Plan`].

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::error::ModelError;
use crate::exec;
use crate::onnx::{GraphProto, NodeProto};
use crate::ops::{self, Activation, Attr, Attrs, Inputs, Kernel, NodeInfo, FUSED_ACTIVATION};
use crate::tensor_io::decode_tensor;
use crate::value::Value;

/// Where a node reads one input from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Src {
    /// A constant of the plan (initializer or folded value).
    Const(usize),
    /// A run-time slot.
    Slot(usize),
}

/// One node to run.
#[derive(Debug)]
pub(crate) struct Step {
    /// The node's name, for errors.
    pub(crate) name: String,
    /// The node's `op_type`, for errors and reports.
    pub(crate) op_type: String,
    pub(crate) kernel: Kernel,
    pub(crate) info: NodeInfo,
    /// One entry per declared input; `None` for an empty name.
    pub(crate) inputs: Vec<Option<Src>>,
    /// One entry per declared output; `None` for an empty name.
    pub(crate) outputs: Vec<Option<usize>>,
    /// Slots to drop after this step (their last use).
    pub(crate) free: Vec<usize>,
}

/// A graph input: the slot it is written to (inputs keep the graph's order).
#[derive(Debug, Clone)]
pub(crate) struct PlanInput {
    pub(crate) slot: usize,
}

/// A planned graph.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) inputs: Vec<PlanInput>,
    /// Graph outputs in order: name and where to read it.
    pub(crate) outputs: Vec<(String, Src)>,
    pub(crate) constants: Vec<Value>,
    pub(crate) steps: Vec<Step>,
    pub(crate) slot_count: usize,
}

/// What planning needs from the model around the graph.
#[derive(Debug, Clone)]
pub(crate) struct PlanContext<'a> {
    /// Imported opset version by domain ("" for the default domain).
    pub(crate) opsets: &'a HashMap<String, i64>,
    /// The model's directory, for external tensor data.
    pub(crate) base_dir: Option<&'a Path>,
}

struct Prepared<'g> {
    proto: &'g NodeProto,
    kernel: Kernel,
    info: NodeInfo,
}

/// Plans `graph`.
///
/// # Errors
///
/// [`ModelError::UnsupportedOperator`] for a node without a kernel,
/// [`ModelError::Malformed`] for dangling or doubly produced values and cycles, and
/// the tensor decoding errors of initializers and tensor attributes.
pub(crate) fn build(graph: &GraphProto, ctx: &PlanContext<'_>) -> Result<Plan, ModelError> {
    let malformed = |reason: String| ModelError::Malformed { reason };

    // Constants: initializers.
    let mut constants: Vec<Value> = Vec::new();
    let mut const_of: HashMap<String, usize> = HashMap::new();
    for init in &graph.initializer {
        let t = decode_tensor(init, ctx.base_dir)?;
        const_of.insert(init.name().to_owned(), constants.len());
        constants.push(Value::Tensor(t));
    }

    // Runtime inputs: graph inputs that are not initializers.
    // Off-spec: an initializer that is also a graph input is treated as a constant
    // (its value cannot be overridden at run time), which lets it be folded.
    let mut defined: HashSet<String> = const_of.keys().cloned().collect();
    let mut input_names = Vec::new();
    for v in &graph.input {
        let name = v.name();
        if !const_of.contains_key(name) {
            if !defined.insert(name.to_owned()) {
                return Err(malformed(format!("graph input {name:?} declared twice")));
            }
            input_names.push(name.to_owned());
        }
    }

    // Resolve kernels and attributes.
    let mut prepared = Vec::with_capacity(graph.node.len());
    for node in &graph.node {
        let domain = node.domain();
        let Some(kernel) = ops::lookup(domain, node.op_type()) else {
            let key = if domain == "ai.onnx" { "" } else { domain };
            return Err(ModelError::UnsupportedOperator {
                op_type: node.op_type().to_owned(),
                domain: if key.is_empty() {
                    String::new()
                } else {
                    format!("{key}.")
                },
                opset: ctx.opsets.get(key).copied().unwrap_or(0),
                node: node.name().to_owned(),
            });
        };
        let key = if domain == "ai.onnx" { "" } else { domain };
        let mut attrs = Attrs::decode(&node.attribute, ctx.base_dir)?;
        // Only the planner's own fusions may set this key (see `fuse_activations`).
        attrs.remove(FUSED_ACTIVATION);
        let info = NodeInfo {
            attrs,
            opset: ctx.opsets.get(key).copied().unwrap_or(0),
            outputs: node.output.len(),
        };
        prepared.push(Prepared {
            proto: node,
            kernel,
            info,
        });
    }

    let order = topological_order(&prepared, &defined)?;

    // Dead-node removal: walk back from the graph outputs.
    let mut needed: HashSet<&str> = graph.output.iter().map(|o| o.name()).collect();
    let mut live = vec![false; prepared.len()];
    for &i in order.iter().rev() {
        let node = prepared[i].proto;
        if node.output.iter().any(|o| needed.contains(o.as_str())) {
            live[i] = true;
            needed.extend(node.input.iter().map(String::as_str));
        }
    }

    // Constant folding, then slot assignment, in topological order.
    let mut slot_of: HashMap<String, usize> = HashMap::new();
    let mut slot_count = 0usize;
    let mut inputs = Vec::with_capacity(input_names.len());
    for name in input_names {
        slot_of.insert(name, slot_count);
        inputs.push(PlanInput { slot: slot_count });
        slot_count += 1;
    }
    let mut steps: Vec<Step> = Vec::new();
    for &i in &order {
        if !live[i] {
            continue;
        }
        let p = &prepared[i];
        let node = p.proto;
        let all_const = node
            .input
            .iter()
            .all(|n| n.is_empty() || const_of.contains_key(n));
        if all_const && ops::is_foldable(node.op_type()) {
            let values = Inputs {
                values: node
                    .input
                    .iter()
                    .map(|n| const_of.get(n).map(|&c| &constants[c]))
                    .collect(),
            };
            if let Ok(outs) = exec::call_kernel(p.kernel, &p.info, &values) {
                if outs.len() >= node.output.iter().filter(|o| !o.is_empty()).count() {
                    for (name, v) in node.output.iter().zip(outs) {
                        if !name.is_empty() {
                            const_of.insert(name.clone(), constants.len());
                            constants.push(v);
                        }
                    }
                    continue;
                }
            }
        }
        let mut srcs = Vec::with_capacity(node.input.len());
        for n in &node.input {
            if n.is_empty() {
                srcs.push(None);
            } else if let Some(&s) = slot_of.get(n) {
                srcs.push(Some(Src::Slot(s)));
            } else if let Some(&c) = const_of.get(n) {
                srcs.push(Some(Src::Const(c)));
            } else {
                return Err(malformed(format!(
                    "node {:?} ({}) reads {n:?}, which nothing produces",
                    node.name(),
                    node.op_type()
                )));
            }
        }
        let mut outs = Vec::with_capacity(node.output.len());
        for n in &node.output {
            if n.is_empty() {
                outs.push(None);
            } else {
                slot_of.insert(n.clone(), slot_count);
                outs.push(Some(slot_count));
                slot_count += 1;
            }
        }
        steps.push(Step {
            name: node.name().to_owned(),
            op_type: node.op_type().to_owned(),
            kernel: p.kernel,
            info: p.info.clone(),
            inputs: srcs,
            outputs: outs,
            free: Vec::new(),
        });
    }

    let mut outputs = Vec::with_capacity(graph.output.len());
    for o in &graph.output {
        let name = o.name();
        let src = if let Some(&s) = slot_of.get(name) {
            Src::Slot(s)
        } else if let Some(&c) = const_of.get(name) {
            Src::Const(c)
        } else {
            return Err(malformed(format!(
                "graph output {name:?} is never produced"
            )));
        };
        outputs.push((name.to_owned(), src));
    }

    pretranspose_gemm_weights(&mut steps, &mut constants, &outputs);
    fuse_activations(&mut steps, &outputs);
    plan_frees(&mut steps, &outputs, slot_count);
    Ok(Plan {
        inputs,
        outputs,
        constants,
        steps,
        slot_count,
    })
}

/// Stores every constant `Gemm` weight read with `transB=1` transposed once, in
/// the row-major `[K, N]` layout the matmul reads without a copy, and clears
/// `transB` on those nodes. A weight shared by several nodes is transposed once.
/// An original no step and no graph output reads any more is released (its
/// slot holds [`Value::None`]), so the plan keeps one copy of each weight;
/// not in graphs with control flow, whose bodies may read outer values by name.
fn pretranspose_gemm_weights(
    steps: &mut [Step],
    constants: &mut Vec<Value>,
    outputs: &[(String, Src)],
) {
    let mut transposed: HashMap<usize, usize> = HashMap::new();
    for step in steps.iter_mut().filter(|s| s.op_type == "Gemm") {
        let Some(Some(Src::Const(c))) = step.inputs.get(1).copied() else {
            continue;
        };
        if step.info.attrs.int("transB", 0).ok() != Some(1) {
            continue;
        }
        let t_index = match transposed.get(&c) {
            Some(&t) => t,
            None => {
                let Some(Value::Tensor(w)) = constants.get(c) else {
                    continue;
                };
                if w.rank() != 2 {
                    continue;
                }
                let Ok(t) = w
                    .candle()
                    .t()
                    .and_then(|t| t.contiguous())
                    .and_then(|t| w.with_data(t))
                else {
                    continue;
                };
                constants.push(Value::Tensor(t));
                transposed.insert(c, constants.len() - 1);
                constants.len() - 1
            }
        };
        step.inputs[1] = Some(Src::Const(t_index));
        step.info.attrs.set("transB", Attr::Int(0));
    }
    if transposed.is_empty()
        || steps
            .iter()
            .any(|s| matches!(s.op_type.as_str(), "If" | "Loop" | "Scan"))
    {
        return;
    }
    let read: std::collections::HashSet<usize> = steps
        .iter()
        .flat_map(|s| s.inputs.iter().flatten())
        .chain(outputs.iter().map(|(_, src)| src))
        .filter_map(|src| match src {
            Src::Const(c) => Some(*c),
            Src::Slot(_) => None,
        })
        .collect();
    for original in transposed.keys() {
        if !read.contains(original) {
            if let Some(v) = constants.get_mut(*original) {
                *v = Value::None;
            }
        }
    }
}

/// Fuses a `Relu` into the `Gemm` or `Conv` before it when the `Relu` is the only
/// reader of that node's output and the output is not a graph output: the
/// producer then writes the `Relu`'s output directly (see `ops::fused`).
fn fuse_activations(steps: &mut Vec<Step>, outputs: &[(String, Src)]) {
    let mut readers: HashMap<usize, usize> = HashMap::new();
    for step in steps.iter() {
        for src in step.inputs.iter().flatten() {
            if let Src::Slot(s) = src {
                *readers.entry(*s).or_default() += 1;
            }
        }
    }
    for (_, src) in outputs {
        if let Src::Slot(s) = src {
            *readers.entry(*s).or_default() += 1;
        }
    }
    let mut producer_of: HashMap<usize, usize> = HashMap::new();
    let mut remove = vec![false; steps.len()];
    for i in 0..steps.len() {
        if matches!(steps[i].op_type.as_str(), "Gemm" | "Conv") {
            if let [Some(out)] = steps[i].outputs[..] {
                producer_of.insert(out, i);
            }
            continue;
        }
        if !Activation::fusable(&steps[i].op_type) || steps[i].outputs.len() != 1 {
            continue;
        }
        let Some(Some(Src::Slot(x))) = steps[i].inputs.first().copied() else {
            continue;
        };
        let Some(&p) = producer_of.get(&x) else {
            continue;
        };
        if readers.get(&x) != Some(&1) || steps[p].info.attrs.has(FUSED_ACTIVATION) {
            continue;
        }
        let op = steps[i].op_type.clone();
        steps[p].outputs = steps[i].outputs.clone();
        steps[p]
            .info
            .attrs
            .set(FUSED_ACTIVATION, Attr::String(op.clone()));
        steps[p].op_type = format!("{}+{op}", steps[p].op_type);
        remove[i] = true;
    }
    let mut i = 0;
    steps.retain(|_| {
        i += 1;
        !remove[i - 1]
    });
}

/// Kahn's algorithm over the nodes; values in `defined` are available from the start.
fn topological_order(
    nodes: &[Prepared<'_>],
    defined: &HashSet<String>,
) -> Result<Vec<usize>, ModelError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, p) in nodes.iter().enumerate() {
        for o in p.proto.output.iter().filter(|o| !o.is_empty()) {
            if defined.contains(o.as_str()) || producer.insert(o, i).is_some() {
                return Err(ModelError::Malformed {
                    reason: format!("value {o:?} is produced more than once"),
                });
            }
        }
    }
    let mut pending = vec![0usize; nodes.len()];
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, p) in nodes.iter().enumerate() {
        let mut deps: HashSet<usize> = HashSet::new();
        for n in &p.proto.input {
            if let Some(&j) = producer.get(n.as_str()) {
                deps.insert(j);
            }
        }
        pending[i] = deps.len();
        for j in deps {
            consumers[j].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..nodes.len()).filter(|&i| pending[i] == 0).collect();
    ready.reverse();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop() {
        order.push(i);
        for &c in consumers[i].iter().rev() {
            pending[c] -= 1;
            if pending[c] == 0 {
                ready.push(c);
            }
        }
    }
    if order.len() != nodes.len() {
        return Err(ModelError::Malformed {
            reason: "the graph has a cycle".to_owned(),
        });
    }
    Ok(order)
}

/// Fills each step's `free` list with the slots whose last reader it is. Graph
/// outputs are never freed; values nobody reads are freed right after being written.
fn plan_frees(steps: &mut [Step], outputs: &[(String, Src)], slot_count: usize) {
    let mut last_use: Vec<Option<usize>> = vec![None; slot_count];
    for (i, step) in steps.iter().enumerate() {
        for s in step.outputs.iter().flatten() {
            last_use[*s] = Some(i);
        }
        for src in step.inputs.iter().flatten() {
            if let Src::Slot(s) = src {
                last_use[*s] = Some(i);
            }
        }
    }
    for (_, src) in outputs {
        if let Src::Slot(s) = src {
            last_use[*s] = None;
        }
    }
    for (slot, last) in last_use.into_iter().enumerate() {
        if let Some(i) = last {
            steps[i].free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_gemm_weights_are_kept_once() {
        let bytes = crate::generate::mlp(&[64, 256, 256, 10], 1);
        let proto = crate::signature::decode_model(&bytes).unwrap();
        let graph = proto.graph.as_ref().unwrap();
        let opsets = HashMap::from([(String::new(), 17)]);
        let plan = build(
            graph,
            &PlanContext {
                opsets: &opsets,
                base_dir: None,
            },
        )
        .unwrap();
        let weights: usize = plan
            .constants
            .iter()
            .filter_map(|v| v.as_tensor())
            .filter(|t| t.rank() == 2)
            .count();
        // Three Gemm weights, each held once (transposed), not twice.
        assert_eq!(weights, 3);
        assert!(plan.constants.iter().any(|v| matches!(v, Value::None)));
    }
}
