//! Control flow: `If`, `Loop`, `Scan`.
//!
//! The bodies are planned at load time (see [`crate::plan::Subgraph`]); these
//! kernels only decide which body runs how often, feed it its declared inputs, and
//! assemble the node's outputs from what it returns. Values a body reads from
//! enclosing graphs arrive as the node's implicit inputs and are passed on by
//! [`run_body`].
//!
//! There is no iteration limit beyond what the model states: a `Loop` with neither
//! a trip count nor a condition runs until its body fails.

use crate::exec::run_body;
use crate::ops::common::{axis_in, i64_tensor, scalar_f64, scalar_i64};
use crate::ops::{Attrs, Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::plan::Subgraph;
use crate::tensor::{ElemType, Tensor};
use crate::value::Value;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "If" => if_else,
        "Loop" => loop_op,
        "Scan" => scan,
        _ => return None,
    };
    Some(k)
}

/// Checks at load time that the bodies of a node take and return as many values
/// as its operator passes and expects, given the node's declared input and output
/// counts. Operators without bodies pass.
///
/// # Errors
///
/// A one-line reason: a missing body, or which count disagrees.
pub(crate) fn check_bodies(
    op_type: &str,
    opset: i64,
    inputs: usize,
    outputs: usize,
    attrs: &Attrs,
) -> Result<(), String> {
    let body = |name: &str| attrs.graph(name).map_err(|e| e.message);
    let arity = |b: &Subgraph| (b.formal_inputs, b.plan.outputs.len());
    match op_type {
        "If" => {
            for name in ["then_branch", "else_branch"] {
                let (ins, outs) = arity(body(name)?);
                if ins != 0 || outs != outputs {
                    return Err(format!(
                        "{name} takes {ins} inputs and returns {outs} outputs; If needs 0 and {outputs}"
                    ));
                }
            }
        }
        "Loop" => {
            let (ins, outs) = arity(body("body")?);
            let carried = inputs
                .checked_sub(2)
                .ok_or("Loop needs at least 2 inputs")?;
            if ins != 2 + carried || outs < 1 + carried || outs - 1 < outputs {
                return Err(format!(
                    "the body takes {ins} inputs and returns {outs} outputs; with {carried} \
                     loop-carried values and {outputs} node outputs it needs {} inputs and \
                     {} outputs",
                    2 + carried,
                    1 + outputs.max(carried)
                ));
            }
        }
        "Scan" | "SequenceMap" => {
            let (ins, outs) = arity(body("body")?);
            let passed = if op_type == "Scan" && opset < 9 {
                inputs.saturating_sub(1)
            } else {
                inputs
            };
            if ins != passed || outs != outputs {
                return Err(format!(
                    "the body takes {ins} inputs and returns {outs} outputs; {op_type} \
                     needs {passed} and {outputs}"
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// A boolean condition: a tensor with exactly one element.
fn truth(t: &Tensor, what: &str) -> Result<bool, OpError> {
    if t.len() != 1 {
        return Err(OpError::new(format!(
            "{what} must have one element, has shape {:?}",
            t.shape()
        )));
    }
    Ok(scalar_f64(t)? != 0.0)
}

fn if_else(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let cond = truth(i.tensor(0)?, "the condition")?;
    let which = if cond { "then_branch" } else { "else_branch" };
    let branch = n.attrs.graph(which)?;
    let outs = run_body(branch, Vec::new(), i)?;
    if outs.len() != n.outputs {
        return Err(OpError::new(format!(
            "{which} returned {} outputs, the node declares {}",
            outs.len(),
            n.outputs
        )));
    }
    Ok(outs)
}

/// Per-iteration tensors of one scan output, stacked along a new axis `axis`.
/// With no iterations the result is empty of shape `[0]` and the body's declared
/// element type.
// Off-spec: the slice shape of a scan output that never ran is unknown here, so
// zero iterations give shape [0] rather than [0, ...slice dims].
fn stack(parts: &[Tensor], axis: i64, elem: Option<ElemType>) -> Result<Tensor, OpError> {
    let Some(first) = parts.first() else {
        let elem = elem.unwrap_or(ElemType::F32);
        return Ok(Tensor::from_i64_as(elem, &[0], Vec::new())?);
    };
    for (k, p) in parts.iter().enumerate() {
        if p.shape() != first.shape() || p.elem_type() != first.elem_type() {
            return Err(OpError::new(format!(
                "scan output of iteration {k} is {} {:?}, the first was {} {:?}",
                p.elem_type(),
                p.shape(),
                first.elem_type(),
                first.shape()
            )));
        }
    }
    // The output has one more dim than the slices; a negative axis counts from it.
    let a = axis_in(axis, first.rank() + 1)?;
    let views: Vec<&candle_core::Tensor> = parts.iter().map(Tensor::candle).collect();
    Ok(first.with_data(candle_core::Tensor::stack(&views, a)?)?)
}

/// A body output that must be a tensor (a scan output slice).
fn tensor_out(v: Value, what: &str) -> Result<Tensor, OpError> {
    match v {
        Value::Tensor(t) => Ok(t),
        other => Err(OpError::new(format!(
            "{what} must be a tensor, the body returned a {}",
            other.kind()
        ))),
    }
}

// Loop: inputs (M?, cond?, v_initial...), body (iteration_num, cond, v...) ->
// (cond, v..., scan...), outputs (v_final..., scan_outputs...).
fn loop_op(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let body = n.attrs.graph("body")?;
    let carried = body.formal_inputs.checked_sub(2).ok_or_else(|| {
        OpError::new(format!(
            "the body declares {} inputs, needs at least 2 (iteration number, condition)",
            body.formal_inputs
        ))
    })?;
    let body_outputs = body.plan.outputs.len();
    let scans = body_outputs.checked_sub(1 + carried).ok_or_else(|| {
        OpError::new(format!(
            "the body returns {body_outputs} outputs, needs at least {} (condition and {carried} loop-carried values)",
            1 + carried
        ))
    })?;
    if n.outputs > carried + scans {
        return Err(OpError::new(format!(
            "the node declares {} outputs, the body yields {}",
            n.outputs,
            carried + scans
        )));
    }
    let max_trips = i.opt(0)?.map(scalar_i64).transpose()?;
    // The body's condition output only counts when the node has a condition input.
    let mut cond = i.opt(1)?.map(|t| truth(t, "the condition")).transpose()?;
    let mut state = (0..carried)
        .map(|k| {
            i.value(2 + k)
                .cloned()
                .ok_or_else(|| OpError::new(format!("loop-carried input {} is missing", 2 + k)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut scanned: Vec<Vec<Tensor>> = vec![Vec::new(); scans];
    let mut iteration = 0i64;
    while max_trips.is_none_or(|m| iteration < m) && cond != Some(false) {
        let mut args = Vec::with_capacity(2 + carried);
        args.push(Value::Tensor(i64_tensor(&[], vec![iteration])?));
        args.push(Value::Tensor(Tensor::from_bools(
            &[],
            vec![cond.unwrap_or(true)],
        )?));
        args.append(&mut state);
        let outs = run_body(body, args, i)?;
        if outs.len() != body_outputs {
            return Err(OpError::new(format!(
                "iteration {iteration}: the body returned {} outputs, declares {body_outputs}",
                outs.len()
            )));
        }
        let mut outs = outs.into_iter();
        let c = outs.next().map(|v| tensor_out(v, "the body's condition"));
        if let (Some(c), Some(_)) = (c, cond) {
            cond = Some(truth(&c?, "the body's condition")?);
        }
        state.extend(outs.by_ref().take(carried));
        for (k, v) in outs.enumerate() {
            scanned[k].push(tensor_out(v, "a scan output")?);
        }
        iteration += 1;
    }
    let mut out = state;
    for (k, parts) in scanned.iter().enumerate() {
        let elem = body.output_elems.get(1 + carried + k).copied().flatten();
        out.push(Value::Tensor(stack(parts, 0, elem)?));
    }
    out.truncate(n.outputs);
    Ok(out)
}

/// How one `Scan` runs: where the scanned inputs are sliced and the scan outputs
/// stacked, and in which order.
struct ScanLayout {
    input_axes: Vec<i64>,
    input_reverse: Vec<bool>,
    output_axes: Vec<i64>,
    output_reverse: Vec<bool>,
}

/// A per-input attribute list, defaulting to zeros, of exactly `len` entries.
fn per_input(n: &NodeInfo, name: &str, len: usize) -> Result<Vec<i64>, OpError> {
    match n.attrs.ints(name)? {
        None => Ok(vec![0; len]),
        Some(v) if v.len() == len => Ok(v.to_vec()),
        Some(v) => Err(OpError::new(format!(
            "{name} has {} entries, expected {len}",
            v.len()
        ))),
    }
}

/// Runs `body` over `inputs` sliced along their scan axes, threading `state`.
/// Returns the final state followed by the stacked scan outputs.
fn scan_run(
    body: &Subgraph,
    i: &Inputs<'_>,
    mut state: Vec<Value>,
    inputs: &[&Tensor],
    layout: &ScanLayout,
) -> Result<Vec<Value>, OpError> {
    let carried = state.len();
    let body_outputs = body.plan.outputs.len();
    let scans = body_outputs.checked_sub(carried).ok_or_else(|| {
        OpError::new(format!(
            "the body returns {body_outputs} outputs, fewer than the {carried} state variables"
        ))
    })?;
    let mut axes = Vec::with_capacity(inputs.len());
    let mut len = None;
    for (t, &axis) in inputs.iter().zip(&layout.input_axes) {
        let a = axis_in(axis, t.rank())?;
        let d = t.shape()[a];
        if len.is_some_and(|l| l != d) {
            return Err(OpError::new(format!(
                "scan inputs disagree on the sequence length: {d} and {}",
                len.unwrap_or(0)
            )));
        }
        len = Some(d);
        axes.push(a);
    }
    let len = len.ok_or_else(|| OpError::new("Scan needs at least one scan input"))?;
    let mut scanned: Vec<Vec<Tensor>> = vec![Vec::with_capacity(len); scans];
    for step in 0..len {
        let mut args = Vec::with_capacity(carried + inputs.len());
        args.append(&mut state);
        for (j, t) in inputs.iter().enumerate() {
            let at = if layout.input_reverse[j] {
                len - 1 - step
            } else {
                step
            };
            let slice = t.candle().narrow(axes[j], at, 1)?.squeeze(axes[j])?;
            args.push(Value::Tensor(t.with_data(slice.contiguous()?)?));
        }
        let outs = run_body(body, args, i)?;
        if outs.len() != body_outputs {
            return Err(OpError::new(format!(
                "step {step}: the body returned {} outputs, declares {body_outputs}",
                outs.len()
            )));
        }
        let mut outs = outs.into_iter();
        state.extend(outs.by_ref().take(carried));
        for (k, v) in outs.enumerate() {
            scanned[k].push(tensor_out(v, "a scan output")?);
        }
    }
    let mut out = state;
    for (k, mut parts) in scanned.into_iter().enumerate() {
        if layout.output_reverse.get(k).copied().unwrap_or(false) {
            parts.reverse();
        }
        let axis = layout.output_axes.get(k).copied().unwrap_or(0);
        let elem = body.output_elems.get(carried + k).copied().flatten();
        out.push(Value::Tensor(stack(&parts, axis, elem)?));
    }
    Ok(out)
}

fn scan(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let body = n.attrs.graph("body")?;
    let m = n.attrs.opt_int("num_scan_inputs")?;
    let m = m
        .and_then(|m| usize::try_from(m).ok())
        .filter(|&m| m > 0)
        .ok_or_else(|| OpError::new("num_scan_inputs must be a positive int"))?;
    let carried = body.formal_inputs.checked_sub(m).ok_or_else(|| {
        OpError::new(format!(
            "the body declares {} inputs, fewer than num_scan_inputs {m}",
            body.formal_inputs
        ))
    })?;
    let scans = body.plan.outputs.len().saturating_sub(carried);
    if n.opset < 9 {
        return scan8(n, i, body, carried, m, scans);
    }
    let state = (0..carried)
        .map(|k| {
            i.value(k)
                .cloned()
                .ok_or_else(|| OpError::new(format!("state input {k} is missing")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let inputs = (carried..carried + m)
        .map(|k| i.tensor(k))
        .collect::<Result<Vec<_>, _>>()?;
    let layout = ScanLayout {
        input_axes: per_input(n, "scan_input_axes", m)?,
        input_reverse: flags(per_input(n, "scan_input_directions", m)?),
        output_axes: per_input(n, "scan_output_axes", scans)?,
        output_reverse: flags(per_input(n, "scan_output_directions", scans)?),
    };
    let mut out = scan_run(body, i, state, &inputs, &layout)?;
    out.truncate(n.outputs);
    Ok(out)
}

fn flags(v: Vec<i64>) -> Vec<bool> {
    v.into_iter().map(|d| d != 0).collect()
}

/// `Scan` before opset 9: every input and output has a leading batch axis, the
/// scan axis of scanned inputs is 1, and input 0 is the optional
/// `sequence_lens`. Each batch entry runs as its own scan.
// Off-spec: a `sequence_lens` entry shorter than the sequence is an error, not a
// shorter scan with padded outputs.
fn scan8(
    n: &NodeInfo,
    i: &Inputs<'_>,
    body: &Subgraph,
    carried: usize,
    m: usize,
    scans: usize,
) -> OpResult {
    let state = (1..=carried)
        .map(|k| i.tensor(k))
        .collect::<Result<Vec<_>, _>>()?;
    let inputs = (1 + carried..1 + carried + m)
        .map(|k| i.tensor(k))
        .collect::<Result<Vec<_>, _>>()?;
    let mut batch = None;
    for t in state.iter().chain(&inputs) {
        let b = *t
            .shape()
            .first()
            .ok_or_else(|| OpError::new("Scan-8 inputs need a batch axis"))?;
        if batch.is_some_and(|x| x != b) {
            return Err(OpError::new("Scan-8 inputs disagree on the batch size"));
        }
        batch = Some(b);
    }
    let batch = batch.unwrap_or(0);
    if let Some(lens) = i.opt(0)? {
        let full = inputs
            .first()
            .and_then(|t| t.shape().get(1))
            .copied()
            .unwrap_or(0);
        if lens.to_i64_vec()?.iter().any(|&l| l != full as i64) {
            return Err(OpError::new(
                "sequence_lens shorter than the sequence is not supported",
            ));
        }
    }
    let layout = ScanLayout {
        input_axes: vec![0; m],
        input_reverse: flags(per_input(n, "directions", m)?),
        output_axes: vec![0; scans],
        output_reverse: vec![false; scans],
    };
    let entry = |t: &Tensor, b: usize| -> Result<Tensor, OpError> {
        Ok(t.with_data(t.candle().narrow(0, b, 1)?.squeeze(0)?.contiguous()?)?)
    };
    let mut per_batch: Vec<Vec<Tensor>> = vec![Vec::with_capacity(batch); carried + scans];
    for b in 0..batch {
        let st = state
            .iter()
            .map(|t| entry(t, b).map(Value::Tensor))
            .collect::<Result<Vec<_>, _>>()?;
        let ins = inputs
            .iter()
            .map(|t| entry(t, b))
            .collect::<Result<Vec<_>, _>>()?;
        let ins: Vec<&Tensor> = ins.iter().collect();
        let outs = scan_run(body, i, st, &ins, &layout)?;
        for (k, v) in outs.into_iter().enumerate() {
            per_batch[k].push(tensor_out(v, "a Scan-8 output")?);
        }
    }
    let mut out = Vec::with_capacity(carried + scans);
    for (k, parts) in per_batch.iter().enumerate() {
        let elem = body.output_elems.get(k).copied().flatten();
        out.push(Value::Tensor(stack(parts, 0, elem)?));
    }
    out.truncate(n.outputs);
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    //! Graph builders for the tests of operators with bodies, shared with
    //! `sequence` and `plan`.

    use super::*;
    use crate::onnx::{
        attribute_proto::AttributeType, type_proto, AttributeProto, GraphProto, ModelProto,
        NodeProto, OperatorSetIdProto, TensorProto, TypeProto, ValueInfoProto,
    };
    use crate::{Model, ModelError, RunError};

    pub(crate) fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: Some(op.to_owned()),
            name: Some(format!("{op}_{}", outputs.first().copied().unwrap_or(""))),
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: outputs.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    pub(crate) fn with_body(mut n: NodeProto, name: &str, body: GraphProto) -> NodeProto {
        n.attribute.push(AttributeProto {
            name: Some(name.to_owned()),
            r#type: Some(AttributeType::Graph as i32),
            g: Some(body),
            ..Default::default()
        });
        n
    }

    pub(crate) fn with_ints(mut n: NodeProto, name: &str, v: &[i64]) -> NodeProto {
        n.attribute.push(AttributeProto {
            name: Some(name.to_owned()),
            r#type: Some(AttributeType::Ints as i32),
            ints: v.to_vec(),
            ..Default::default()
        });
        n
    }

    pub(crate) fn with_int(mut n: NodeProto, name: &str, v: i64) -> NodeProto {
        n.attribute.push(AttributeProto {
            name: Some(name.to_owned()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(v),
            ..Default::default()
        });
        n
    }

    /// A value without a declared type (a tensor of any type).
    pub(crate) fn any(name: &str) -> ValueInfoProto {
        ValueInfoProto {
            name: Some(name.to_owned()),
            ..Default::default()
        }
    }

    /// A value declared as a sequence of float tensors.
    pub(crate) fn float_sequence(name: &str) -> ValueInfoProto {
        let tensor = TypeProto {
            denotation: None,
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: None,
            })),
        };
        ValueInfoProto {
            name: Some(name.to_owned()),
            r#type: Some(TypeProto {
                denotation: None,
                value: Some(type_proto::Value::SequenceType(Box::new(
                    type_proto::Sequence {
                        elem_type: Some(Box::new(tensor)),
                    },
                ))),
            }),
            ..Default::default()
        }
    }

    pub(crate) fn graph(
        nodes: Vec<NodeProto>,
        inputs: Vec<ValueInfoProto>,
        outputs: &[&str],
    ) -> GraphProto {
        GraphProto {
            node: nodes,
            input: inputs,
            output: outputs.iter().map(|o| any(o)).collect(),
            ..Default::default()
        }
    }

    pub(crate) fn with_floats(
        mut g: GraphProto,
        name: &str,
        dims: &[i64],
        v: &[f32],
    ) -> GraphProto {
        g.initializer.push(TensorProto {
            name: Some(name.to_owned()),
            dims: dims.to_vec(),
            data_type: Some(1),
            float_data: v.to_vec(),
            ..Default::default()
        });
        g
    }

    pub(crate) fn with_int64s(
        mut g: GraphProto,
        name: &str,
        dims: &[i64],
        v: &[i64],
    ) -> GraphProto {
        g.initializer.push(TensorProto {
            name: Some(name.to_owned()),
            dims: dims.to_vec(),
            data_type: Some(7),
            int64_data: v.to_vec(),
            ..Default::default()
        });
        g
    }

    pub(crate) fn load(g: GraphProto, opset: i64) -> Result<Model, ModelError> {
        let proto = ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(opset),
            }],
            graph: Some(g),
            ..Default::default()
        };
        Model::from_proto(&proto, None)
    }

    pub(crate) fn run(m: &Model, inputs: Vec<(&str, Value)>) -> Result<Vec<Value>, RunError> {
        let inputs = inputs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        Ok(m.run_values(inputs)?.into_iter().map(|(_, v)| v).collect())
    }

    pub(crate) fn floats(shape: &[usize], v: &[f32]) -> Value {
        Value::Tensor(Tensor::from_f32(shape, v.to_vec()).unwrap())
    }

    pub(crate) fn int64(v: i64) -> Value {
        Value::Tensor(i64_tensor(&[], vec![v]).unwrap())
    }

    pub(crate) fn boolean(v: bool) -> Value {
        Value::Tensor(Tensor::from_bools(&[], vec![v]).unwrap())
    }

    /// Shape and values of a float tensor output.
    pub(crate) fn read(v: &Value) -> (Vec<usize>, Vec<f32>) {
        let t = v.as_tensor().expect("a tensor output");
        (t.shape().to_vec(), t.to_f32_vec().unwrap())
    }

    /// `If(c)` whose then branch doubles `x` (computed outside) and whose else
    /// branch adds the outer initializer `w` to `x`.
    fn if_model() -> Model {
        let then_branch = graph(vec![node("Identity", &["twice"], &["a"])], vec![], &["a"]);
        let else_branch = graph(vec![node("Add", &["x", "w"], &["b"])], vec![], &["b"]);
        let cond = node("If", &["c"], &["y"]);
        let cond = with_body(cond, "then_branch", then_branch);
        let cond = with_body(cond, "else_branch", else_branch);
        let g = graph(
            vec![cond, node("Add", &["x", "x"], &["twice"])],
            vec![any("c"), any("x")],
            &["y"],
        );
        load(with_floats(g, "w", &[2], &[10.0, 20.0]), 17).unwrap()
    }

    #[test]
    fn if_runs_the_branch_its_condition_picks_and_reads_outer_values() {
        let m = if_model();
        let x = floats(&[2], &[1.0, 2.0]);
        let y = run(&m, vec![("c", boolean(true)), ("x", x.clone())]).unwrap();
        assert_eq!(read(&y[0]), (vec![2], vec![2.0, 4.0]));
        let y = run(&m, vec![("c", boolean(false)), ("x", x)]).unwrap();
        assert_eq!(read(&y[0]), (vec![2], vec![11.0, 22.0]));
    }

    #[test]
    fn if_with_a_condition_of_two_elements_fails_at_run_time() {
        let m = if_model();
        let c = Value::Tensor(Tensor::from_bools(&[2], vec![true, false]).unwrap());
        let err = run(&m, vec![("c", c), ("x", floats(&[2], &[1.0, 2.0]))]).unwrap_err();
        assert!(err.to_string().contains("one element"), "{err}");
    }

    #[test]
    fn if_whose_branches_return_too_many_outputs_is_rejected_at_load() {
        let branch = || graph(vec![], vec![], &["x", "x"]);
        let n = with_body(node("If", &["c"], &["y"]), "then_branch", branch());
        let n = with_body(n, "else_branch", branch());
        let err = load(graph(vec![n], vec![any("c"), any("x")], &["y"]), 17).unwrap_err();
        assert!(matches!(err, ModelError::Malformed { .. }), "{err}");
    }

    /// `Loop(m, cond, acc)` adding the outer `x` to `acc` each trip, scanning
    /// `acc`; its condition output is `i < 2`.
    fn loop_model(with_cond: bool) -> Model {
        let body = graph(
            vec![
                node("Add", &["acc_in", "x"], &["acc_out"]),
                node("Less", &["i", "two"], &["cond_out"]),
                node("Identity", &["acc_out"], &["scan"]),
            ],
            vec![any("i"), any("cond_in"), any("acc_in")],
            &["cond_out", "acc_out", "scan"],
        );
        let body = with_int64s(body, "two", &[], &[2]);
        let cond = if with_cond { "cond" } else { "" };
        let l = with_body(
            node("Loop", &["m", cond, "x"], &["final", "scans"]),
            "body",
            body,
        );
        let mut inputs = vec![any("m"), any("x")];
        if with_cond {
            inputs.push(any("cond"));
        }
        load(graph(vec![l], inputs, &["final", "scans"]), 17).unwrap()
    }

    #[test]
    fn loop_carries_state_and_stacks_scan_outputs() {
        let m = loop_model(false);
        let x = floats(&[2], &[1.0, 2.0]);
        // Without a condition input the body's condition is ignored: 4 trips.
        let out = run(&m, vec![("m", int64(4)), ("x", x.clone())]).unwrap();
        assert_eq!(read(&out[0]), (vec![2], vec![5.0, 10.0]));
        assert_eq!(
            read(&out[1]),
            (vec![4, 2], vec![2.0, 4.0, 3.0, 6.0, 4.0, 8.0, 5.0, 10.0])
        );
        let out = run(&m, vec![("m", int64(0)), ("x", x)]).unwrap();
        assert_eq!(read(&out[0]), (vec![2], vec![1.0, 2.0]));
        assert_eq!(read(&out[1]).0, vec![0]);
    }

    #[test]
    fn loop_with_a_condition_input_stops_when_the_body_says_so() {
        let m = loop_model(true);
        let x = floats(&[1], &[1.0]);
        let out = run(
            &m,
            vec![("m", int64(10)), ("x", x.clone()), ("cond", boolean(true))],
        );
        // Trips 0, 1 and 2 run; after trip 2 the body's condition is false.
        assert_eq!(read(&out.unwrap()[0]), (vec![1], vec![4.0]));
        let out = run(
            &m,
            vec![("m", int64(10)), ("x", x), ("cond", boolean(false))],
        );
        assert_eq!(read(&out.unwrap()[0]), (vec![1], vec![1.0]));
    }

    #[test]
    fn loop_whose_body_returns_too_few_outputs_is_rejected_at_load() {
        // One loop-carried value, but the body returns only its condition.
        let body = graph(vec![], vec![any("i"), any("c"), any("v")], &["c"]);
        let l = with_body(node("Loop", &["m", "", "x"], &["y"]), "body", body);
        let err = load(graph(vec![l], vec![any("m"), any("x")], &["y"]), 17).unwrap_err();
        assert!(matches!(err, ModelError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("returns 1 outputs"), "{err}");
    }

    #[test]
    fn loop_without_a_body_is_rejected_at_load() {
        let l = node("Loop", &["m", "", "x"], &["y"]);
        let err = load(graph(vec![l], vec![any("m"), any("x")], &["y"]), 17).unwrap_err();
        assert!(err.to_string().contains("\"body\" is required"), "{err}");
    }

    fn scan_model(opset: i64, attrs: &[(&str, &[i64])]) -> Model {
        let body = graph(
            vec![
                node("Add", &["s_in", "x_t"], &["s_out"]),
                node("Identity", &["s_out"], &["scan"]),
            ],
            vec![any("s_in"), any("x_t")],
            &["s_out", "scan"],
        );
        let inputs: &[&str] = if opset < 9 {
            &["", "s", "x"]
        } else {
            &["s", "x"]
        };
        let mut n = with_int(
            node("Scan", inputs, &["s_final", "ys"]),
            "num_scan_inputs",
            1,
        );
        for (name, v) in attrs {
            n = with_ints(n, name, v);
        }
        let n = with_body(n, "body", body);
        load(
            graph(vec![n], vec![any("s"), any("x")], &["s_final", "ys"]),
            opset,
        )
        .unwrap()
    }

    #[test]
    fn scan_follows_input_and_output_directions_and_axes() {
        let m = scan_model(
            11,
            &[
                ("scan_input_directions", &[1]),
                ("scan_output_directions", &[1]),
                ("scan_output_axes", &[-1]),
            ],
        );
        let x = floats(&[3, 2], &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        let out = run(&m, vec![("s", floats(&[2], &[0.0, 0.0])), ("x", x)]).unwrap();
        assert_eq!(read(&out[0]), (vec![2], vec![6.0, 6.0]));
        // Steps see x reversed (3, 2, 1): sums 3, 5, 6, prepended: 6, 5, 3.
        assert_eq!(
            read(&out[1]),
            (vec![2, 3], vec![6.0, 5.0, 3.0, 6.0, 5.0, 3.0])
        );
    }

    #[test]
    fn scan_8_runs_each_batch_entry_on_its_own() {
        let m = scan_model(8, &[]);
        let s = floats(&[2, 1], &[0.0, 100.0]);
        let x = floats(&[2, 2, 1], &[1.0, 2.0, 3.0, 4.0]);
        let out = run(&m, vec![("s", s), ("x", x)]).unwrap();
        assert_eq!(read(&out[0]), (vec![2, 1], vec![3.0, 107.0]));
        assert_eq!(read(&out[1]), (vec![2, 2, 1], vec![1.0, 3.0, 103.0, 107.0]));
    }

    #[test]
    fn scan_with_a_wrong_number_of_axes_fails_at_run_time() {
        let m = scan_model(11, &[("scan_input_axes", &[0, 1])]);
        let x = floats(&[1, 2], &[1.0, 2.0]);
        let err = run(&m, vec![("s", floats(&[2], &[0.0, 0.0])), ("x", x)]).unwrap_err();
        assert!(
            err.to_string().contains("scan_input_axes has 2 entries"),
            "{err}"
        );
    }

    #[test]
    fn a_failing_body_reports_the_inner_node() {
        let m = scan_model(11, &[]);
        // State [3] does not broadcast with slices of [2].
        let s = floats(&[3], &[0.0, 0.0, 0.0]);
        let err = run(&m, vec![("s", s), ("x", floats(&[1, 2], &[1.0, 2.0]))]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("in body") && msg.contains("Add"), "{msg}");
    }
}
