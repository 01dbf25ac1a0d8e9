//! `ai.onnx.preview.training.Gradient`, expanded at load time into ordinary
//! nodes: reverse-mode differentiation of the forward nodes between the
//! node's `xs` and `y`.
//!
//! Design: an inference runtime has no autograd; a graph that asks for
//! gradients of a few element-wise operations (the ONNX test suite's
//! `test_gradient_of_add`, `test_gradient_of_add_and_mul`) is rewritten before
//! planning, so the planner, the kernels and the buffer plan see only
//! operators they know. The seed is ones shaped like `y` (the gradient of the
//! sum of `y`, as the operator's definition says for a non-scalar `y`); each
//! contribution to an input that was broadcast is summed back to that
//! input's shape (`SumToShape`). Differentiable: `Add`, `Sub`, `Mul`, `Div`,
//! `Neg`, `Identity`. Any other operator on a path from an `x` to `y` is a
//! load-time error naming it. Only the main graph is rewritten (a `Gradient`
//! inside an `If`/`Loop` body stays unsupported).

use std::collections::{HashMap, HashSet};

use crate::error::ModelError;
use crate::onnx::{AttributeProto, GraphProto, NodeProto};
use crate::ops::{Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::value::Value;

/// The domain of the `Gradient` operator.
pub(crate) const TRAINING_DOMAIN: &str = "ai.onnx.preview.training";

/// The domain of the helper operators the rewrite emits (`OnesLike`,
/// `ZerosLike`, `SumToShape`); a model may not use them itself.
pub(crate) const PRIVATE_DOMAIN: &str = "flotilla.private.gradient";

/// Kernels of [`PRIVATE_DOMAIN`].
pub(crate) fn lookup_private(op_type: &str) -> Option<Kernel> {
    Some(match op_type {
        "OnesLike" => ones_like,
        "ZerosLike" => zeros_like,
        "SumToShape" => sum_to_shape,
        _ => return None,
    })
}

fn ones_like(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    Ok(vec![Value::Tensor(x.with_data(x.candle().ones_like()?)?)])
}

fn zeros_like(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    Ok(vec![Value::Tensor(x.with_data(x.candle().zeros_like()?)?)])
}

/// Sums input 0 over the axes input 1's shape broadcast it along, to input
/// 1's shape.
fn sum_to_shape(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (g, like) = (i.tensor(0)?, i.tensor(1)?);
    let want = like.shape();
    if g.shape() == want {
        return Ok(vec![Value::Tensor(g.clone())]);
    }
    let extra = g.rank().checked_sub(want.len()).ok_or_else(|| {
        OpError::new(format!(
            "gradient of shape {:?} for an input of shape {want:?}",
            g.shape()
        ))
    })?;
    let mut t = g.candle().clone();
    for axis in 0..g.rank() {
        let target = if axis < extra { 1 } else { want[axis - extra] };
        let have = g.shape()[axis];
        if have != target {
            if target != 1 {
                return Err(OpError::new(format!(
                    "gradient of shape {:?} does not broadcast from an input of shape {want:?}",
                    g.shape()
                )));
            }
            t = t.sum_keepdim(axis)?;
        }
    }
    let t = t.reshape(want)?;
    Ok(vec![Value::Tensor(g.with_data(t)?)])
}

/// The graph with each `Gradient` node replaced by the nodes that compute
/// it; `None` when there is none.
///
/// # Errors
///
/// [`ModelError::UnsupportedGradient`] when an operator on a path from an
/// `x` to `y` cannot be differentiated, or the node is malformed.
pub(crate) fn expand(graph: &GraphProto) -> Result<Option<GraphProto>, ModelError> {
    let is_gradient = |n: &NodeProto| n.domain() == TRAINING_DOMAIN && n.op_type() == "Gradient";
    if !graph.node.iter().any(is_gradient) {
        return Ok(None);
    }
    let forward: Vec<&NodeProto> = graph.node.iter().filter(|n| !is_gradient(n)).collect();
    // Built once for all Gradient nodes: who makes and who reads each value.
    let mut graph_of = Edges::default();
    for n in &forward {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            graph_of.producer.insert(o.as_str(), n);
        }
        for i in &n.input {
            graph_of.consumers.entry(i.as_str()).or_default().push(n);
        }
    }
    let mut out = graph.clone();
    out.node = forward.iter().map(|n| (*n).clone()).collect();
    for (index, g) in graph.node.iter().filter(|n| is_gradient(n)).enumerate() {
        let mut b = Backward {
            prefix: format!("__flotilla_gradient_{index}"),
            node: g.name().to_owned(),
            nodes: Vec::new(),
            count: 0,
        };
        b.differentiate(g, &graph_of)?;
        out.node.extend(b.nodes);
    }
    Ok(Some(out))
}

/// The forward graph's edges, by value name.
#[derive(Default)]
struct Edges<'a> {
    producer: HashMap<&'a str, &'a NodeProto>,
    consumers: HashMap<&'a str, Vec<&'a NodeProto>>,
}

/// The nodes one `Gradient` expands to.
struct Backward {
    prefix: String,
    node: String,
    nodes: Vec<NodeProto>,
    count: usize,
}

impl Backward {
    fn fail(&self, reason: impl Into<String>) -> ModelError {
        ModelError::UnsupportedGradient {
            node: self.node.clone(),
            reason: reason.into(),
        }
    }

    /// Emits `op(inputs)` and returns its output's name.
    fn emit(&mut self, domain: &str, op: &str, inputs: &[&str]) -> String {
        self.count += 1;
        let out = format!("{}_{}", self.prefix, self.count);
        self.emit_to(domain, op, inputs, &out);
        out
    }

    /// Emits `op(inputs)` writing the value `out`.
    fn emit_to(&mut self, domain: &str, op: &str, inputs: &[&str], out: &str) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![out.to_owned()],
            name: Some(format!("{}_to_{out}", self.prefix)),
            op_type: Some(op.to_owned()),
            domain: Some(domain.to_owned()),
            ..Default::default()
        });
    }

    fn op(&mut self, op: &str, inputs: &[&str]) -> String {
        self.emit("", op, inputs)
    }

    fn differentiate(&mut self, g: &NodeProto, edges: &Edges<'_>) -> Result<(), ModelError> {
        let xs = strings(g, "xs").ok_or_else(|| self.fail("attribute xs is required"))?;
        let y = string(g, "y").ok_or_else(|| self.fail("attribute y is required"))?;
        if g.output.len() != xs.len() {
            return Err(self.fail(format!("{} outputs for {} xs", g.output.len(), xs.len())));
        }
        // Values that depend on an x: a walk from the xs over consumers
        // (linear in the graph, whatever order its nodes are listed in).
        let mut reach: HashSet<&str> = xs.iter().map(String::as_str).collect();
        let mut todo: Vec<&str> = reach.iter().copied().collect();
        while let Some(v) = todo.pop() {
            for n in edges.consumers.get(v).into_iter().flatten() {
                for o in &n.output {
                    if reach.insert(o.as_str()) {
                        todo.push(o.as_str());
                    }
                }
            }
        }
        // The nodes between the xs and y, producers before consumers.
        let mut order: Vec<&NodeProto> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        let mut stack: Vec<(&str, bool)> = vec![(y.as_str(), false)];
        while let Some((v, done)) = stack.pop() {
            let Some(n) = edges.producer.get(v) else {
                continue;
            };
            if done {
                order.push(n);
                continue;
            }
            // Each node once (keyed by its first output); nothing past an x.
            if !reach.contains(v) || xs.iter().any(|x| x == v) || !seen.insert(n.output[0].as_str())
            {
                continue;
            }
            stack.push((v, true));
            for i in &n.input {
                stack.push((i.as_str(), false));
            }
        }
        let mut grads: HashMap<String, String> = HashMap::new();
        if reach.contains(y.as_str()) {
            let seed = self.emit(PRIVATE_DOMAIN, "OnesLike", &[&y]);
            grads.insert(y.clone(), seed);
        }
        for n in order.iter().rev() {
            let Some(gy) = n.output.first().and_then(|o| grads.get(o)).cloned() else {
                continue;
            };
            let ins: Vec<&str> = n.input.iter().map(String::as_str).collect();
            let on_path = |v: &str| reach.contains(v);
            let mut add = |b: &mut Self, v: &str, g: String| {
                let g = b.emit(PRIVATE_DOMAIN, "SumToShape", &[&g, v]);
                let total = match grads.get(v) {
                    Some(prev) => b.op("Add", &[prev, &g]),
                    None => g,
                };
                grads.insert(v.to_owned(), total);
            };
            let op = n.op_type();
            let plain = n.domain().is_empty() || n.domain() == "ai.onnx";
            match (plain, op, ins.as_slice()) {
                (true, "Add", &[a, c]) => {
                    for v in [a, c] {
                        if on_path(v) {
                            add(self, v, gy.clone());
                        }
                    }
                }
                (true, "Sub", &[a, c]) => {
                    if on_path(a) {
                        add(self, a, gy.clone());
                    }
                    if on_path(c) {
                        let neg = self.op("Neg", &[&gy]);
                        add(self, c, neg);
                    }
                }
                (true, "Mul", &[a, c]) => {
                    if on_path(a) {
                        let d = self.op("Mul", &[&gy, c]);
                        add(self, a, d);
                    }
                    if on_path(c) {
                        let d = self.op("Mul", &[&gy, a]);
                        add(self, c, d);
                    }
                }
                (true, "Div", &[a, c]) => {
                    if on_path(a) {
                        let d = self.op("Div", &[&gy, c]);
                        add(self, a, d);
                    }
                    if on_path(c) {
                        // d(a/c)/dc = -a / c²
                        let ga = self.op("Mul", &[&gy, a]);
                        let cc = self.op("Mul", &[c, c]);
                        let q = self.op("Div", &[&ga, &cc]);
                        let d = self.op("Neg", &[&q]);
                        add(self, c, d);
                    }
                }
                (true, "Neg", &[a]) => {
                    if on_path(a) {
                        let d = self.op("Neg", &[&gy]);
                        add(self, a, d);
                    }
                }
                (true, "Identity", &[a]) => {
                    if on_path(a) {
                        add(self, a, gy.clone());
                    }
                }
                _ => {
                    return Err(self.fail(format!(
                        "cannot differentiate through {}{op} (node {:?}); supported: Add, Sub, Mul, Div, Neg, Identity",
                        if plain { String::new() } else { format!("{}.", n.domain()) },
                        n.name()
                    )))
                }
            }
        }
        for (x, out) in xs.iter().zip(&g.output) {
            if out.is_empty() {
                continue;
            }
            match grads.get(x).cloned() {
                Some(gx) => self.emit_to("", "Identity", &[&gx], out),
                None => self.emit_to(PRIVATE_DOMAIN, "ZerosLike", &[x], out),
            }
        }
        Ok(())
    }
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name() == name)
}

fn strings(n: &NodeProto, name: &str) -> Option<Vec<String>> {
    let a = attr(n, name)?;
    a.strings
        .iter()
        .map(|s| String::from_utf8(s.clone()).ok())
        .collect()
}

fn string(n: &NodeProto, name: &str) -> Option<String> {
    String::from_utf8(attr(n, name)?.s.clone()?).ok()
}

#[cfg(test)]
mod tests {
    // Tests unwrap: a failure is a test failure.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::onnx::attribute_proto::AttributeType;
    use crate::ops::control::tests::{any, floats, graph, load, node, read, run};

    fn gradient(xs: &[&str], y: &str, outs: &[&str]) -> NodeProto {
        let mut n = node("Gradient", xs, outs);
        n.domain = Some(TRAINING_DOMAIN.to_owned());
        n.attribute.push(AttributeProto {
            name: Some("xs".into()),
            r#type: Some(AttributeType::Strings as i32),
            strings: xs.iter().map(|s| s.as_bytes().to_vec()).collect(),
            ..Default::default()
        });
        n.attribute.push(AttributeProto {
            name: Some("y".into()),
            r#type: Some(AttributeType::String as i32),
            s: Some(y.as_bytes().to_vec()),
            ..Default::default()
        });
        n
    }

    #[test]
    fn sub_div_and_broadcast_differentiate_like_the_formulas() {
        // y = (a - b) / c, with b broadcast along a's rows and c a scalar;
        // an unused input gets zeros.
        let g = graph(
            vec![
                node("Sub", &["a", "b"], &["d"]),
                node("Div", &["d", "c"], &["y"]),
                gradient(&["a", "b", "c", "u"], "y", &["ga", "gb", "gc", "gu"]),
            ],
            vec![any("a"), any("b"), any("c"), any("u")],
            &["y", "ga", "gb", "gc", "gu"],
        );
        let m = load(g, 13).unwrap();
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [0.5, 1.0, 1.5];
        let c = 2.0f32;
        let outs = run(
            &m,
            vec![
                ("a", floats(&[2, 3], &a)),
                ("b", floats(&[3], &b)),
                ("c", floats(&[], &[c])),
                ("u", floats(&[2], &[7.0, 8.0])),
            ],
        )
        .unwrap();
        assert_eq!(read(&outs[1]), (vec![2, 3], vec![0.5; 6]), "dy/da = 1/c");
        assert_eq!(
            read(&outs[2]),
            (vec![3], vec![-1.0; 3]),
            "dy/db = -1/c, summed over 2 rows"
        );
        // dy/dc = Σ -(a - b) / c²
        let want: f32 = (0..6).map(|i| -(a[i] - b[i % 3]) / (c * c)).sum();
        let (shape, gc) = read(&outs[3]);
        assert!(shape.is_empty());
        assert!((gc[0] - want).abs() < 1e-5, "{} vs {want}", gc[0]);
        assert_eq!(
            read(&outs[4]),
            (vec![2], vec![0.0; 2]),
            "u does not reach y"
        );
    }

    #[test]
    fn a_value_used_twice_sums_its_gradients() {
        // n = -(x * x + x): dn/dx = -(2x + 1), whatever order the nodes
        // are listed in.
        let mut nodes = vec![
            node("Mul", &["x", "x"], &["s"]),
            node("Add", &["s", "x"], &["y"]),
            node("Neg", &["y"], &["n"]),
            gradient(&["x"], "n", &["gx"]),
        ];
        for _ in 0..2 {
            let g = graph(nodes.clone(), vec![any("x")], &["gx"]);
            let m = load(g, 13).unwrap();
            let outs = run(&m, vec![("x", floats(&[3], &[1.0, -2.0, 0.5]))]).unwrap();
            assert_eq!(read(&outs[0]), (vec![3], vec![-3.0, 3.0, -2.0]));
            nodes.reverse();
        }
    }

    #[test]
    fn an_operator_without_a_derivative_is_a_load_error() {
        let g = graph(
            vec![node("Relu", &["x"], &["y"]), gradient(&["x"], "y", &["gx"])],
            vec![any("x")],
            &["gx"],
        );
        let err = load(g, 13).unwrap_err().to_string();
        assert!(err.contains("cannot differentiate through Relu"), "{err}");
        let mut bad = gradient(&["x"], "y", &["gx"]);
        bad.attribute.retain(|a| a.name() != "y");
        let g = graph(
            vec![node("Neg", &["x"], &["y"]), bad],
            vec![any("x")],
            &["gx"],
        );
        let err = load(g, 13).unwrap_err().to_string();
        assert!(err.contains("attribute y is required"), "{err}");
    }
}
