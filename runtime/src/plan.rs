//! The execution plan of a graph, built once per model load.
//!
//! Planning decodes the initializers into tensors, resolves every node to its
//! kernel (an unknown operator is a load-time error), orders the nodes
//! topologically, drops nodes no graph output depends on, folds nodes whose inputs
//! are all constants, and assigns every remaining intermediate value a slot that is
//! freed right after its last use.
//!
//! Subgraphs (the bodies of `If`, `Loop`, `Scan`, `SequenceMap`) are planned here
//! too, once, into a [`Subgraph`] stored in the node's attribute. A body may read any
//! value of an enclosing graph by name; such a name is a *capture*: the body's plan
//! gets one extra input per capture, and the node that owns the body reads the
//! captured values as extra (implicit) inputs, so ordering, liveness and freeing in
//! the enclosing graph see them like any other read.
//!
//! This module does not run anything except constant folding; [`crate::exec`] runs
//! a [`Plan`].

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::error::ModelError;
use crate::exec;
use crate::onnx::{attribute_proto::AttributeType, type_proto, GraphProto, NodeProto};
use crate::ops::{
    self, Activation, Attr, Attrs, Inputs, Kernel, NodeInfo, FUSED_ACTIVATION, FUSED_MAX_POOL,
    NARROW_GEMM, R_TRANSPOSED, W_TRANSPOSED,
};
use crate::tensor::ElemType;
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
    /// One entry per declared input; `None` for an empty name. A node with
    /// subgraphs has one more entry per value its bodies capture (see [`Subgraph`]).
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
    /// The graph's runtime inputs in order; for a subgraph, followed by one input
    /// per captured outer value.
    pub(crate) inputs: Vec<PlanInput>,
    /// Graph outputs in order: name and where to read it.
    pub(crate) outputs: Vec<(String, Src)>,
    pub(crate) constants: Vec<Value>,
    pub(crate) steps: Vec<Step>,
    pub(crate) slot_count: usize,
}

/// A planned graph attribute: the body of a control-flow or `SequenceMap` node.
///
/// Design: the body is planned once at load time like any graph; what it reads
/// from enclosing graphs becomes inputs of its plan (after its declared ones), fed
/// from the owning node's implicit inputs at `capture_at`. Running a body is then
/// just [`exec::run`] on fresh slots, so a body cannot see or keep the enclosing
/// run's slots.
#[derive(Debug)]
pub(crate) struct Subgraph {
    /// The body's plan.
    pub(crate) plan: Plan,
    /// How many of the plan's inputs are the body's declared inputs.
    // invariant: formal_inputs + capture_at.len() == plan.inputs.len()
    pub(crate) formal_inputs: usize,
    /// For each captured outer value, in plan-input order, its index among the
    /// owning node's inputs (always past the node's declared inputs).
    pub(crate) capture_at: Vec<usize>,
    /// Declared element type of each body output (of the tensor, or of a
    /// sequence's tensors), for results built from zero iterations.
    pub(crate) output_elems: Vec<Option<ElemType>>,
}

/// What planning needs from the model around the graph.
#[derive(Debug, Clone)]
pub(crate) struct PlanContext<'a> {
    /// Imported opset version by domain ("" for the default domain).
    pub(crate) opsets: &'a HashMap<String, i64>,
    /// The model's directory, for external tensor data.
    pub(crate) base_dir: Option<&'a Path>,
}

/// The names an enclosing graph defines, for resolving what a subgraph reads.
///
/// Nesting depth is bounded by the protobuf decoder's recursion limit.
struct Scope<'a> {
    names: HashSet<&'a str>,
    parent: Option<&'a Scope<'a>>,
}

impl Scope<'_> {
    fn contains(&self, name: &str) -> bool {
        self.names.contains(name) || self.parent.is_some_and(|p| p.contains(name))
    }
}

struct Prepared<'g> {
    proto: &'g NodeProto,
    kernel: Kernel,
    info: NodeInfo,
    /// Outer values the node's subgraphs capture, read after the declared inputs.
    implicit: Vec<String>,
}

impl Prepared<'_> {
    /// Every name the node reads: declared inputs (empty names included), then
    /// implicit ones.
    fn reads(&self) -> impl Iterator<Item = &str> {
        self.proto
            .input
            .iter()
            .map(String::as_str)
            .chain(self.implicit.iter().map(String::as_str))
    }
}

/// Run-time slot assignment while planning one graph, including the slots of
/// values captured from enclosing graphs.
struct Slots<'s> {
    slot_of: HashMap<String, usize>,
    count: usize,
    inputs: Vec<PlanInput>,
    /// Names captured from enclosing graphs, in plan-input order.
    captured: Vec<String>,
    outer: Option<&'s Scope<'s>>,
}

impl Slots<'_> {
    fn fresh(&mut self, name: &str) -> usize {
        let s = self.count;
        self.slot_of.insert(name.to_owned(), s);
        self.count += 1;
        s
    }

    /// Where `name` is read from: a local slot, a constant, or a new capture.
    fn resolve(&mut self, name: &str, const_of: &HashMap<String, usize>) -> Option<Src> {
        if let Some(&s) = self.slot_of.get(name) {
            return Some(Src::Slot(s));
        }
        if let Some(&c) = const_of.get(name) {
            return Some(Src::Const(c));
        }
        if self.outer.is_some_and(|o| o.contains(name)) {
            let s = self.fresh(name);
            self.inputs.push(PlanInput { slot: s });
            self.captured.push(name.to_owned());
            return Some(Src::Slot(s));
        }
        None
    }
}

/// Plans `graph`.
///
/// # Errors
///
/// [`ModelError::UnsupportedOperator`] for a node without a kernel,
/// [`ModelError::Malformed`] for dangling or doubly produced values and cycles, and
/// the tensor decoding errors of initializers and tensor attributes.
pub(crate) fn build(graph: &GraphProto, ctx: &PlanContext<'_>) -> Result<Plan, ModelError> {
    if let Some(expanded) = crate::gradient::expand(graph)? {
        return build_graph(&expanded, ctx, None).map(|(plan, _)| plan);
    }
    build_graph(graph, ctx, None).map(|(plan, _)| plan)
}

/// Plans `graph` inside `outer` (`None` for the main graph); also returns the
/// names it captures from enclosing graphs, one per plan input past the
/// declared ones.
fn build_graph<'a>(
    graph: &'a GraphProto,
    ctx: &PlanContext<'_>,
    outer: Option<&'a Scope<'a>>,
) -> Result<(Plan, Vec<String>), ModelError> {
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

    // What this graph's subgraphs may read from here or further out.
    let scope = Scope {
        names: defined
            .iter()
            .map(String::as_str)
            .chain(
                graph
                    .node
                    .iter()
                    .flat_map(|n| n.output.iter().map(String::as_str)),
            )
            .filter(|n| !n.is_empty())
            .collect(),
        parent: outer,
    };

    // Resolve kernels and attributes; plan subgraphs.
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
        // Only the planner's own rewrites may set these keys (see
        // `fuse_activations`, `fuse_pools` and `pretranspose_weights`).
        attrs.remove(FUSED_ACTIVATION);
        attrs.remove(FUSED_MAX_POOL);
        attrs.remove(W_TRANSPOSED);
        attrs.remove(R_TRANSPOSED);
        let opset = ctx.opsets.get(key).copied().unwrap_or(0);
        let implicit = plan_subgraphs(node, opset, ctx, &scope, &mut attrs)?;
        let info = NodeInfo {
            attrs,
            opset,
            outputs: node.output.len(),
        };
        prepared.push(Prepared {
            proto: node,
            kernel,
            info,
            implicit,
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
            needed.extend(prepared[i].reads());
        }
    }

    // Constant folding, then slot assignment, in topological order.
    let mut slots = Slots {
        slot_of: HashMap::new(),
        count: 0,
        inputs: Vec::with_capacity(input_names.len()),
        captured: Vec::new(),
        outer,
    };
    for name in input_names {
        let s = slots.fresh(&name);
        slots.inputs.push(PlanInput { slot: s });
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
        // A node with a body is never folded: the body may read run-time values.
        let has_body = node.attribute.iter().any(|a| a.g.is_some());
        if all_const && !has_body && ops::is_foldable(node.op_type()) {
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
        let mut srcs = Vec::with_capacity(node.input.len() + p.implicit.len());
        for (k, n) in p.reads().enumerate() {
            if n.is_empty() {
                srcs.push(None);
            } else if let Some(src) = slots.resolve(n, &const_of) {
                srcs.push(Some(src));
            } else {
                let how = if k < node.input.len() {
                    "reads"
                } else {
                    "has a body that reads"
                };
                return Err(malformed(format!(
                    "node {:?} ({}) {how} {n:?}, which nothing produces",
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
                outs.push(Some(slots.fresh(n)));
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
        let Some(src) = slots.resolve(name, &const_of) else {
            return Err(malformed(format!(
                "graph output {name:?} is never produced"
            )));
        };
        outputs.push((name.to_owned(), src));
    }

    let slot_count = slots.count;
    pretranspose_weights(&mut steps, &mut constants, &outputs);
    fuse_linear_layers(&mut steps, &constants, &outputs);
    fuse_activations(&mut steps, &outputs);
    fuse_pools(&mut steps, &outputs);
    plan_frees(&mut steps, &outputs, slot_count);
    let plan = Plan {
        inputs: slots.inputs,
        outputs,
        constants,
        steps,
        slot_count,
    };
    Ok((plan, slots.captured))
}

/// Plans every graph attribute of `node` inside `scope`, stores the result in
/// `attrs` and checks the bodies' arity against the node; returns the union of the outer values they capture, which become
/// the node's implicit inputs (in first-capture order).
fn plan_subgraphs(
    node: &NodeProto,
    opset: i64,
    ctx: &PlanContext<'_>,
    scope: &Scope<'_>,
    attrs: &mut Attrs,
) -> Result<Vec<String>, ModelError> {
    let mut implicit: Vec<String> = Vec::new();
    for a in &node.attribute {
        let Some(body) = a.g.as_ref() else {
            continue;
        };
        if a.r#type.is_some() && a.r#type() != AttributeType::Graph {
            continue;
        }
        let (plan, captured) = build_graph(body, ctx, Some(scope)).map_err(|e| match e {
            ModelError::Malformed { reason } => ModelError::Malformed {
                reason: format!(
                    "in attribute {:?} of node {:?} ({}): {reason}",
                    a.name(),
                    node.name(),
                    node.op_type()
                ),
            },
            other => other,
        })?;
        let capture_at = captured
            .iter()
            .map(|name| {
                let k = implicit.iter().position(|n| n == name).unwrap_or_else(|| {
                    implicit.push(name.clone());
                    implicit.len() - 1
                });
                node.input.len() + k
            })
            .collect();
        let output_elems = body.output.iter().map(declared_elem).collect();
        let sub = Subgraph {
            formal_inputs: plan.inputs.len() - captured.len(),
            plan,
            capture_at,
            output_elems,
        };
        attrs.set(a.name(), Attr::Graph(Some(Arc::new(sub))));
    }
    ops::control::check_bodies(
        node.op_type(),
        opset,
        node.input.len(),
        node.output.len(),
        attrs,
    )
    .map_err(|reason| ModelError::Malformed {
        reason: format!("node {:?} ({}): {reason}", node.name(), node.op_type()),
    })?;
    Ok(implicit)
}

/// The element type a value declares: of its tensor, or of its sequence's or
/// optional's tensors.
fn declared_elem(v: &crate::onnx::ValueInfoProto) -> Option<ElemType> {
    let mut ty = v.r#type.as_ref()?.value.as_ref()?;
    loop {
        ty = match ty {
            type_proto::Value::TensorType(t) => return ElemType::from_onnx(t.elem_type()),
            type_proto::Value::SequenceType(s) => s.elem_type.as_ref()?.value.as_ref()?,
            type_proto::Value::OptionalType(o) => o.elem_type.as_ref()?.value.as_ref()?,
            _ => return None,
        };
    }
}

/// Stores constant weights transposed once, in the layout their kernel reads
/// without a copy, and marks the nodes that now read the transposed copy:
/// - a `Gemm` weight read with `transB=1` becomes row-major `[K, N]` and the
///   node's `transB` is cleared, unless it has fewer than [`NARROW_GEMM`]
///   rows (outputs): each output is then one contiguous dot product (see
///   `NARROW_GEMM`), while transposed rows that narrow leave nothing to
///   vectorise;
/// - the W of an `LSTM`, `GRU` or `RNN` ([dirs, gates * hidden, input]) becomes
///   [dirs, input, gates * hidden], marked with [`W_TRANSPOSED`], so the input
///   projection of all steps reads it row by row;
/// - the R of an `LSTM` ([dirs, 4 * hidden, hidden]) becomes Rᵀ packed in
///   panels of 64 hidden units (`ops::pack_recurrent`), marked with
///   [`R_TRANSPOSED`], so each batch-1 step's product is a sum of rows of it
///   (no horizontal sums) read as one stream per panel.
///
/// A weight shared by several such inputs is transposed once. An original no
/// step and no graph output reads any more is released (its slot holds
/// [`Value::None`]), so the plan keeps one copy of each weight. A body that
/// reads the original by name reads it through its node's implicit inputs, so
/// the original is kept then.
fn pretranspose_weights(steps: &mut [Step], constants: &mut Vec<Value>, outputs: &[(String, Src)]) {
    // (original constant, packed as an LSTM's R) -> the new constant
    let mut transposed: HashMap<(usize, bool), usize> = HashMap::new();
    for step in steps.iter_mut() {
        // (input, rank it must have, rows it needs (the second-to-last dim),
        // the attribute that marks the new layout)
        let targets: &[(usize, usize, usize, (&str, i64))] = match step.op_type.as_str() {
            "Gemm" if step.info.attrs.int("transB", 0).ok() == Some(1) => {
                &[(1, 2, NARROW_GEMM, ("transB", 0))]
            }
            "LSTM" => &[(1, 3, 0, (W_TRANSPOSED, 1)), (2, 3, 0, (R_TRANSPOSED, 1))],
            "GRU" | "RNN" => &[(1, 3, 0, (W_TRANSPOSED, 1))],
            _ => continue,
        };
        for &(input, rank, min_rows, mark) in targets {
            let Some(Some(Src::Const(c))) = step.inputs.get(input).copied() else {
                continue;
            };
            // An LSTM's R is packed in panels, not only transposed.
            let packed = mark.0 == R_TRANSPOSED;
            let t_index = match transposed.get(&(c, packed)) {
                Some(&t) => t,
                None => {
                    let Some(Value::Tensor(w)) = constants.get(c) else {
                        continue;
                    };
                    if w.rank() != rank || w.shape()[rank - 2] < min_rows {
                        continue;
                    }
                    let t = if packed {
                        ops::pack_recurrent(w.candle())
                    } else {
                        w.candle()
                            .transpose(rank - 2, rank - 1)
                            .and_then(|t| t.contiguous())
                    };
                    let Ok(t) = t.and_then(|t| w.with_data(t)) else {
                        continue;
                    };
                    constants.push(Value::Tensor(t));
                    transposed.insert((c, packed), constants.len() - 1);
                    constants.len() - 1
                }
            };
            step.inputs[input] = Some(Src::Const(t_index));
            step.info.attrs.set(mark.0, Attr::Int(mark.1));
        }
    }
    if transposed.is_empty() {
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
    for (original, _) in transposed.keys() {
        if !read.contains(original) {
            if let Some(v) = constants.get_mut(*original) {
                *v = Value::None;
            }
        }
    }
}

/// How many steps (and graph outputs) read each slot.
fn slot_readers(steps: &[Step], outputs: &[(String, Src)]) -> HashMap<usize, usize> {
    let mut readers: HashMap<usize, usize> = HashMap::new();
    let reads = steps
        .iter()
        .flat_map(|s| s.inputs.iter().flatten())
        .chain(outputs.iter().map(|(_, src)| src));
    for src in reads {
        if let Src::Slot(s) = src {
            *readers.entry(*s).or_default() += 1;
        }
    }
    readers
}

/// Fuses `MatMul(A, W)` and the `Add(·, b)` after it into one linear-layer step
/// (`ops::matmul_bias`) when `W` is a 2-D constant, `b` a constant, and the `Add`
/// (with exactly two inputs and one output) is the product's only reader and the
/// product is not a graph output. The fused step keeps the `MatMul`'s place and
/// writes the `Add`'s output; its kernel falls back to the two kernels for any
/// shape or type its fast path does not cover, so the rewrite never changes
/// what the graph computes.
fn fuse_linear_layers(steps: &mut Vec<Step>, constants: &[Value], outputs: &[(String, Src)]) {
    let readers = slot_readers(steps, outputs);
    let mut producer_of: HashMap<usize, usize> = HashMap::new();
    let mut remove = vec![false; steps.len()];
    for i in 0..steps.len() {
        if steps[i].op_type == "MatMul" {
            let weight_is_matrix = matches!(
                steps[i].inputs[..],
                [Some(_), Some(Src::Const(c))]
                    if matches!(constants.get(c), Some(Value::Tensor(w)) if w.rank() == 2)
            );
            if let ([Some(out)], true) = (&steps[i].outputs[..], weight_is_matrix) {
                producer_of.insert(*out, i);
            }
            continue;
        }
        if steps[i].op_type != "Add" || steps[i].outputs.len() != 1 {
            continue;
        }
        let (x, bias) = match steps[i].inputs[..] {
            [Some(Src::Slot(x)), Some(Src::Const(b))]
            | [Some(Src::Const(b)), Some(Src::Slot(x))] => (x, b),
            _ => continue,
        };
        let Some(&p) = producer_of.get(&x) else {
            continue;
        };
        if readers.get(&x) != Some(&1) || !matches!(constants.get(bias), Some(Value::Tensor(_))) {
            continue;
        }
        producer_of.remove(&x);
        steps[p].outputs = steps[i].outputs.clone();
        steps[p].inputs.push(Some(Src::Const(bias)));
        steps[p].kernel = ops::matmul_bias::matmul_add;
        steps[p].op_type = ops::matmul_bias::FUSED_OP.to_owned();
        steps[p].name = format!("{}+{}", steps[p].name, steps[i].name);
        remove[i] = true;
    }
    let mut i = 0;
    steps.retain(|_| {
        i += 1;
        !remove[i - 1]
    });
}

/// Fuses a `Relu` into the `Gemm`, `Conv` or fused linear layer before it when
/// the `Relu` is the only reader of that node's output and the output is not a
/// graph output: the producer then writes the `Relu`'s output directly (see
/// `ops::fused`).
fn fuse_activations(steps: &mut Vec<Step>, outputs: &[(String, Src)]) {
    fold_into_producer(
        steps,
        outputs,
        |p| {
            matches!(
                p.op_type.as_str(),
                "Gemm" | "Conv" | ops::matmul_bias::FUSED_OP
            )
        },
        |p, c| {
            let fold = Activation::fusable(&c.op_type)
                && c.outputs.len() == 1
                && !p.info.attrs.has(FUSED_ACTIVATION);
            fold.then(|| (FUSED_ACTIVATION, Attr::String(c.op_type.clone())))
        },
    );
}

/// Fuses a `MaxPool` with a 2x2 window at stride 2, no padding, no dilation and
/// floor rounding, and without its `Indices` output, into the `Conv` (or
/// `Conv+Relu`) before it when the pool is that node's only reader and the conv
/// output is not a graph output: the conv then writes the pooled output
/// directly (see `ops::conv`), so the full-size output is never stored. The
/// pattern is what CNN exporters write for every downsampling block.
fn fuse_pools(steps: &mut Vec<Step>, outputs: &[(String, Src)]) {
    fold_into_producer(
        steps,
        outputs,
        |p| p.op_type == "Conv" || p.op_type == "Conv+Relu",
        |_, c| {
            (c.op_type == "MaxPool" && is_plain_2x2_pool(c)).then(|| (FUSED_MAX_POOL, Attr::Int(1)))
        },
    );
}

/// Folds a consumer step into the producer of its first input: when `is_producer`
/// picks the producer, the consumer is the only reader of that output, the
/// output is not a graph output, and `mark(producer, consumer)` names the
/// private attribute that tells the producer's kernel to do the consumer's work.
/// The producer then writes the consumer's outputs, its op type gains
/// `+<consumer op>`, and the consumer is removed.
fn fold_into_producer(
    steps: &mut Vec<Step>,
    outputs: &[(String, Src)],
    is_producer: impl Fn(&Step) -> bool,
    mark: impl Fn(&Step, &Step) -> Option<(&'static str, Attr)>,
) {
    let readers = slot_readers(steps, outputs);
    let mut producer_of: HashMap<usize, usize> = HashMap::new();
    let mut remove = vec![false; steps.len()];
    for i in 0..steps.len() {
        if is_producer(&steps[i]) {
            if let [Some(out)] = steps[i].outputs[..] {
                producer_of.insert(out, i);
            }
            continue;
        }
        let Some(Some(Src::Slot(x))) = steps[i].inputs.first().copied() else {
            continue;
        };
        let Some(&p) = producer_of.get(&x) else {
            continue;
        };
        if readers.get(&x) != Some(&1) {
            continue;
        }
        let Some((key, value)) = mark(&steps[p], &steps[i]) else {
            continue;
        };
        producer_of.remove(&x);
        steps[p].outputs = steps[i].outputs.clone();
        steps[p].info.attrs.set(key, value);
        steps[p].op_type = format!("{}+{}", steps[p].op_type, steps[i].op_type);
        remove[i] = true;
    }
    let mut i = 0;
    steps.retain(|_| {
        i += 1;
        !remove[i - 1]
    });
}

/// True for a `MaxPool` step that [`fuse_pools`] may fold into a conv.
fn is_plain_2x2_pool(step: &Step) -> bool {
    let a = &step.info.attrs;
    let ints_are = |name: &str, want: &[i64], absent_ok: bool| match a.ints(name) {
        Ok(Some(v)) => v == want,
        Ok(None) => absent_ok,
        Err(_) => false,
    };
    let single_output = matches!(step.outputs[..], [Some(_)]);
    single_output
        && step.inputs.len() == 1
        && ints_are("kernel_shape", &[2, 2], false)
        && ints_are("strides", &[2, 2], false)
        && ints_are("pads", &[0, 0, 0, 0], true)
        && ints_are("dilations", &[1, 1], true)
        && matches!(a.string("auto_pad", "NOTSET"), Ok("NOTSET" | "VALID"))
        && matches!(a.int("ceil_mode", 0), Ok(0))
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
        for n in p.reads() {
            if let Some(&j) = producer.get(n) {
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

    use crate::ops::control::tests::{
        any, boolean, floats, graph, int64, load, node, read, run, with_body,
    };

    fn plan_of(g: &GraphProto) -> Result<Plan, ModelError> {
        let opsets = HashMap::from([(String::new(), 17)]);
        build(
            g,
            &PlanContext {
                opsets: &opsets,
                base_dir: None,
            },
        )
    }

    /// `t = x + x`, then `If(c)` whose branches return `t` and `x` by name; the
    /// `If` is listed before the node producing `t`.
    fn capturing_if() -> GraphProto {
        let then_branch = graph(vec![node("Identity", &["t"], &["a"])], vec![], &["a"]);
        let else_branch = graph(vec![], vec![], &["x"]);
        let n = with_body(node("If", &["c"], &["y"]), "then_branch", then_branch);
        let n = with_body(n, "else_branch", else_branch);
        graph(
            vec![n, node("Add", &["x", "x"], &["t"])],
            vec![any("c"), any("x")],
            &["y"],
        )
    }

    #[test]
    fn captured_values_are_implicit_inputs_freed_after_the_owning_node() {
        let plan = plan_of(&capturing_if()).unwrap();
        let ops: Vec<_> = plan.steps.iter().map(|s| s.op_type.as_str()).collect();
        // The producer of `t` runs first although the proto lists it second.
        assert_eq!(ops, ["Add", "If"]);
        let add_out = plan.steps[0].outputs[0].unwrap();
        let step = &plan.steps[1];
        // Declared `c`, then `t` (then branch) and `x` (else branch).
        assert_eq!(step.inputs.len(), 3);
        assert_eq!(step.inputs[1], Some(Src::Slot(add_out)));
        assert!(step.free.contains(&add_out));
        let Ok(sub) = step.info.attrs.graph("then_branch") else {
            panic!("then_branch not planned")
        };
        assert_eq!((sub.formal_inputs, sub.capture_at.clone()), (0, vec![1]));
    }

    #[test]
    fn a_branch_may_return_an_outer_value_directly() {
        let m = load(capturing_if(), 17).unwrap();
        let x = floats(&[2], &[1.0, 2.0]);
        let out = run(&m, vec![("c", boolean(false)), ("x", x.clone())]).unwrap();
        assert_eq!(read(&out[0]), (vec![2], vec![1.0, 2.0]));
        let out = run(&m, vec![("c", boolean(true)), ("x", x)]).unwrap();
        assert_eq!(read(&out[0]), (vec![2], vec![2.0, 4.0]));
    }

    #[test]
    fn nested_bodies_capture_through_every_level() {
        // Loop body -> If -> reads the main graph's `w` and the body's `acc_in`.
        let inner = graph(vec![node("Add", &["acc_in", "w"], &["r"])], vec![], &["r"]);
        let n = with_body(node("If", &["c"], &["acc_out"]), "then_branch", inner);
        let n = with_body(n, "else_branch", graph(vec![], vec![], &["acc_in"]));
        let body = graph(
            vec![n, node("Identity", &["cond_in"], &["cond_out"])],
            vec![any("i"), any("cond_in"), any("acc_in")],
            &["cond_out", "acc_out"],
        );
        let l = with_body(node("Loop", &["m", "", "x"], &["y"]), "body", body);
        let g = graph(
            vec![l, node("Neg", &["x"], &["w"])],
            vec![any("m"), any("c"), any("x")],
            &["y"],
        );
        let m = load(g, 17).unwrap();
        let x = floats(&[1], &[1.0]);
        let out = run(&m, vec![("m", int64(3)), ("c", boolean(true)), ("x", x)]).unwrap();
        assert_eq!(read(&out[0]), (vec![1], vec![-2.0]));
    }

    #[test]
    fn a_body_reading_an_unknown_name_is_malformed() {
        let branch = || graph(vec![node("Identity", &["nowhere"], &["a"])], vec![], &["a"]);
        let n = with_body(node("If", &["c"], &["y"]), "then_branch", branch());
        let n = with_body(n, "else_branch", branch());
        let err = plan_of(&graph(vec![n], vec![any("c")], &["y"])).unwrap_err();
        let ModelError::Malformed { reason } = err else {
            panic!("not malformed: {err}")
        };
        assert!(
            reason.contains("then_branch") && reason.contains("nowhere"),
            "{reason}"
        );
    }

    #[test]
    fn a_body_reading_its_own_node_output_is_a_cycle() {
        let branch = || graph(vec![node("Identity", &["y"], &["a"])], vec![], &["a"]);
        let n = with_body(node("If", &["c"], &["y"]), "then_branch", branch());
        let n = with_body(n, "else_branch", branch());
        let err = plan_of(&graph(vec![n], vec![any("c")], &["y"])).unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
    }
}

#[cfg(test)]
mod linear_layer_fusion_tests {
    use super::*;
    use crate::onnx::TensorProto;
    use crate::ops::control::tests::{any, floats, graph, load, node, read, run};

    fn init(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
        TensorProto {
            name: Some(name.to_owned()),
            dims: dims.to_vec(),
            data_type: Some(1),
            float_data: v.to_vec(),
            ..Default::default()
        }
    }

    /// `y = Relu(x @ w + b)`, plus `extra` outputs; `b` a constant unless named
    /// as a graph input.
    fn linear(outputs: &[&str], bias_is_input: bool) -> GraphProto {
        let mut g = graph(
            vec![
                node("MatMul", &["x", "w"], &["p"]),
                node("Add", &["b", "p"], &["s"]),
                node("Relu", &["s"], &["y"]),
            ],
            vec![any("x")],
            outputs,
        );
        g.initializer
            .push(init("w", &[2, 3], &[1., -1., 0.5, 2., 0., -3.]));
        let bias = init("b", &[3], &[0.5, 0.25, -1.]);
        if bias_is_input {
            g.input.push(any("b"));
        } else {
            g.initializer.push(bias);
        }
        g
    }

    fn op_types(g: &GraphProto) -> Vec<String> {
        let opsets = HashMap::from([(String::new(), 17)]);
        let ctx = PlanContext {
            opsets: &opsets,
            base_dir: None,
        };
        build(g, &ctx)
            .unwrap()
            .steps
            .iter()
            .map(|s| s.op_type.clone())
            .collect()
    }

    #[test]
    fn matmul_bias_add_and_relu_become_one_step_with_the_same_result() {
        let g = linear(&["y"], false);
        assert_eq!(op_types(&g), vec!["MatMul+Add+Relu"]);
        let m = load(g, 17).unwrap();
        let out = run(&m, vec![("x", floats(&[2, 2], &[1., 2., -1., 0.5]))]).unwrap();
        // x @ w = [[5, -1, -5.5], [0, 1, -2]]; + b, then Relu.
        assert_eq!(
            read(&out[0]),
            (vec![2, 3], vec![5.5, 0., 0., 0.5, 1.25, 0.])
        );
    }

    #[test]
    fn a_product_read_elsewhere_or_a_runtime_bias_is_not_fused() {
        // The product is also a graph output.
        assert_eq!(
            op_types(&linear(&["y", "p"], false)),
            vec!["MatMul", "Add", "Relu"]
        );
        // The bias is a run-time input.
        assert_eq!(
            op_types(&linear(&["y"], true)),
            vec!["MatMul", "Add", "Relu"]
        );
    }
}

#[cfg(test)]
mod pool_fusion_tests {
    use super::*;
    use crate::onnx::TensorProto;
    use crate::ops::control::tests::{any, floats, graph, load, node, read, run, with_ints};

    /// `y = MaxPool(Relu(Conv(x, w, b)))` with `pool` shaping the MaxPool, plus
    /// `extra` graph outputs. x is [1, c, h, wd], w [m, c, 3, 3] with pads 1.
    fn conv_block(
        c: usize,
        m: usize,
        pool: impl Fn(NodeProto) -> NodeProto,
        extra: &[&str],
    ) -> GraphProto {
        let conv = with_ints(
            node("Conv", &["x", "w", "b"], &["c"]),
            "pads",
            &[1, 1, 1, 1],
        );
        let mut outputs = vec!["y"];
        outputs.extend(extra);
        let mut g = graph(
            vec![
                conv,
                node("Relu", &["c"], &["r"]),
                pool(node("MaxPool", &["r"], &["y"])),
            ],
            vec![any("x")],
            &outputs,
        );
        let wv: Vec<f32> = (0..m * c * 9)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 17.0)
            .collect();
        let bv: Vec<f32> = (0..m).map(|i| (i as f32 - 2.0) / 3.0).collect();
        for (name, dims, v) in [("w", vec![m, c, 3, 3], wv), ("b", vec![m], bv)] {
            g.initializer.push(TensorProto {
                name: Some(name.to_owned()),
                dims: dims.iter().map(|&d| d as i64).collect(),
                data_type: Some(1),
                float_data: v,
                ..Default::default()
            });
        }
        g
    }

    fn two_by_two(n: NodeProto) -> NodeProto {
        with_ints(with_ints(n, "kernel_shape", &[2, 2]), "strides", &[2, 2])
    }

    fn op_types(g: &GraphProto) -> Vec<String> {
        load(g.clone(), 17)
            .unwrap()
            .planned_op_types()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_plain_2x2_pool_joins_the_conv_and_gives_the_unfused_result_on_any_thread_count() {
        let (c, m) = (16, 16);
        let fused = conv_block(c, m, two_by_two, &[]);
        assert_eq!(op_types(&fused), vec!["Conv+Relu+MaxPool"]);
        // Reading the conv output elsewhere keeps all three steps.
        let unfused = conv_block(c, m, two_by_two, &["c"]);
        assert_eq!(op_types(&unfused), vec!["Conv", "Relu", "MaxPool"]);
        // Odd sides (the last row and column are dropped), and sizes large enough
        // that the conv splits into bands of rows on several threads.
        for (h, wd) in [(41, 39), (6, 7), (1, 5)] {
            let xv: Vec<f32> = (0..c * h * wd)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                .collect();
            let x = floats(&[1, c, h, wd], &xv);
            let want = run(&load(unfused.clone(), 17).unwrap(), vec![("x", x.clone())]).unwrap();
            let (want_shape, want_v) = read(&want[0]);
            assert_eq!(want_shape, vec![1, m, h / 2, wd / 2]);
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let model = load(fused.clone(), 17).unwrap();
                let got = pool
                    .install(|| run(&model, vec![("x", x.clone())]))
                    .unwrap();
                let (shape, v) = read(&got[0]);
                assert_eq!(shape, want_shape, "{h}x{wd}, {threads} threads");
                for (i, (p, q)) in v.iter().zip(&want_v).enumerate() {
                    assert!(
                        (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                        "{h}x{wd}, {threads} threads, at {i}: {p} vs {q}"
                    );
                }
            }
        }
    }

    #[test]
    fn pools_that_pad_overlap_round_up_or_return_indices_stay_separate() {
        type Shape = Box<dyn Fn(NodeProto) -> NodeProto>;
        let cases: Vec<(&str, Shape)> = vec![
            (
                "pads",
                Box::new(|n| with_ints(two_by_two(n), "pads", &[0, 0, 1, 1])),
            ),
            (
                "stride 1",
                Box::new(|n| with_ints(with_ints(n, "kernel_shape", &[2, 2]), "strides", &[1, 1])),
            ),
            (
                "3x3",
                Box::new(|n| with_ints(with_ints(n, "kernel_shape", &[3, 3]), "strides", &[2, 2])),
            ),
            (
                "ceil_mode",
                Box::new(|n| {
                    let mut n = two_by_two(n);
                    n.attribute.push(crate::onnx::AttributeProto {
                        name: Some("ceil_mode".to_owned()),
                        r#type: Some(crate::onnx::attribute_proto::AttributeType::Int as i32),
                        i: Some(1),
                        ..Default::default()
                    });
                    n
                }),
            ),
            (
                "indices",
                Box::new(|n| {
                    let mut n = two_by_two(n);
                    n.output.push("idx".to_owned());
                    n
                }),
            ),
        ];
        for (what, pool) in cases {
            let g = conv_block(2, 3, pool, &[]);
            assert_eq!(
                op_types(&g),
                vec!["Conv+Relu", "MaxPool"],
                "a pool with {what}"
            );
        }
    }
}

#[cfg(test)]
mod rnn_weight_tests {
    use super::*;
    use crate::onnx::{AttributeProto, TensorProto};
    use crate::ops::control::tests::{any, floats, graph, load, node, read, run};

    fn init(name: &str, dims: &[usize], v: Vec<f32>) -> TensorProto {
        TensorProto {
            name: Some(name.to_owned()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(1),
            float_data: v,
            ..Default::default()
        }
    }

    /// `op` over x [seq 4, batch 1, input 3] with hidden 5; W and R constant or
    /// graph inputs, plus `extra` outputs. Returns the graph, W and R.
    fn rnn(
        op: &str,
        gates: usize,
        constant: bool,
        extra: &[&str],
    ) -> (GraphProto, Vec<f32>, Vec<f32>) {
        let (input, hidden) = (3, 5);
        let mut n = node(op, &["x", "w", "r"], &["y"]);
        n.attribute.push(AttributeProto {
            name: Some("hidden_size".to_owned()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(hidden as i64),
            ..Default::default()
        });
        let mut outputs = vec!["y"];
        outputs.extend(extra);
        let mut inputs = vec![any("x")];
        if !constant {
            inputs.push(any("w"));
            inputs.push(any("r"));
        }
        let mut g = graph(vec![n], inputs, &outputs);
        let gh = gates * hidden;
        let wv: Vec<f32> = (0..gh * input)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 9.0)
            .collect();
        let rv: Vec<f32> = (0..gh * hidden)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 12.0)
            .collect();
        if constant {
            g.initializer.push(init("w", &[1, gh, input], wv.clone()));
            g.initializer.push(init("r", &[1, gh, hidden], rv.clone()));
        }
        (g, wv, rv)
    }

    #[test]
    fn a_constant_recurrent_weight_is_stored_transposed_with_the_same_result() {
        let xv: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) / 4.0).collect();
        let x = floats(&[4, 1, 3], &xv);
        for (op, gates) in [("LSTM", 4), ("GRU", 3), ("RNN", 1)] {
            let (fed, wv, rv) = rnn(op, gates, false, &[]);
            let want = run(
                &load(fed, 17).unwrap(),
                vec![
                    ("x", x.clone()),
                    ("w", floats(&[1, gates * 5, 3], &wv)),
                    ("r", floats(&[1, gates * 5, 5], &rv)),
                ],
            )
            .unwrap();
            let (constant, _, _) = rnn(op, gates, true, &[]);
            let opsets = HashMap::from([(String::new(), 17)]);
            let ctx = PlanContext {
                opsets: &opsets,
                base_dir: None,
            };
            let plan = build(&constant, &ctx).unwrap();
            let step = &plan.steps[0];
            assert_eq!(step.info.attrs.int(W_TRANSPOSED, 0).unwrap(), 1, "{op}");
            // Only the LSTM's batch-1 step has a kernel for R transposed.
            let r_t = i64::from(op == "LSTM");
            assert_eq!(step.info.attrs.int(R_TRANSPOSED, 0).unwrap(), r_t, "{op}");
            let model = load(constant, 17).unwrap();
            let got = run(&model, vec![("x", x.clone())]).unwrap();
            let ((gs, gv), (ws, wv)) = (read(&got[0]), read(&want[0]));
            assert_eq!(gs, ws, "{op}");
            for (a, b) in gv.iter().zip(&wv) {
                assert!((a - b).abs() <= 1e-6, "{op}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn a_recurrent_weight_read_elsewhere_keeps_its_layout_for_that_reader() {
        let (g, wv, _) = rnn("GRU", 3, true, &["w"]);
        let model = load(g, 17).unwrap();
        let x = floats(&[4, 1, 3], &[0.5; 12]);
        let out = run(&model, vec![("x", x.clone())]).unwrap();
        assert_eq!(read(&out[1]), (vec![1, 15, 3], wv));
        let (g, _, rv) = rnn("LSTM", 4, true, &["r"]);
        let out = run(&load(g, 17).unwrap(), vec![("x", x)]).unwrap();
        assert_eq!(read(&out[1]), (vec![1, 20, 5], rv));
    }
}
