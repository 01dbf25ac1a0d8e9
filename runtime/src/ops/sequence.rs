//! Sequence and optional operators: `SequenceEmpty`, `SequenceConstruct`,
//! `SequenceInsert`, `SequenceErase`, `SequenceAt`, `SequenceLength`,
//! `SplitToSequence`, `ConcatFromSequence`, `SequenceMap`, `Optional`,
//! `OptionalHasElement`, `OptionalGetElement`.
//!
//! A sequence is [`Value::Sequence`]; an optional is the value it holds, or
//! [`Value::None`] when empty. Sequences of sequences and of maps are not held.

use crate::exec::run_body;
use crate::ops::common::{axis_in, i64_tensor, ints, scalar_i64};
use crate::ops::{Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::tensor::{ElemType, Tensor};
use crate::value::Value;

/// The kernel for `op`, if this family has it.
pub(super) fn lookup(op: &str) -> Option<Kernel> {
    let k: Kernel = match op {
        "SequenceEmpty" => sequence_empty,
        "SequenceConstruct" => sequence_construct,
        "SequenceInsert" => sequence_insert,
        "SequenceErase" => sequence_erase,
        "SequenceAt" => sequence_at,
        "SequenceLength" => |_, i| {
            let (_, items) = sequence(i, 0)?;
            Ok(vec![Value::Tensor(i64_tensor(
                &[],
                vec![items.len() as i64],
            )?)])
        },
        "SplitToSequence" => split_to_sequence,
        "ConcatFromSequence" => concat_from_sequence,
        "SequenceMap" => sequence_map,
        "Optional" => |_, i| Ok(vec![i.value(0).cloned().unwrap_or(Value::None)]),
        "OptionalHasElement" => |_, i| {
            let has = !matches!(i.value(0), None | Some(Value::None));
            Ok(vec![Value::Tensor(Tensor::from_bools(&[], vec![has])?)])
        },
        "OptionalGetElement" => |_, i| match i.value(0) {
            None => Err(OpError::new("input 0 is required")),
            Some(Value::None) => Err(OpError::new("the optional is empty")),
            Some(v) => Ok(vec![v.clone()]),
        },
        _ => return None,
    };
    Some(k)
}

/// The sequence at input `k`, which must be present.
fn sequence<'a>(i: &Inputs<'a>, k: usize) -> Result<(ElemType, &'a [Tensor]), OpError> {
    match i.value(k) {
        Some(Value::Sequence(elem, items)) => Ok((*elem, items)),
        Some(other) => Err(OpError::new(format!(
            "input {k} is a {}, expected a sequence",
            other.kind()
        ))),
        None => Err(OpError::new(format!("input {k} is required"))),
    }
}

/// A position into a sequence of `len` items, normalised: `-len..=max` where
/// `max` is `len` for insertion and `len - 1` otherwise.
fn position(p: &Tensor, len: usize, inserting: bool) -> Result<usize, OpError> {
    let raw = scalar_i64(p)?;
    let n = len as i64;
    let max = if inserting { n } else { n - 1 };
    let at = if raw < 0 { raw + n } else { raw };
    if raw < -n || raw > max || at < 0 {
        return Err(OpError::new(format!(
            "position {raw} is out of range for a sequence of {len}"
        )));
    }
    Ok(at as usize)
}

fn need_elem(t: &Tensor, elem: ElemType) -> Result<(), OpError> {
    if t.elem_type() != elem {
        return Err(OpError::new(format!(
            "tensor of {} does not fit a sequence of {elem}",
            t.elem_type()
        )));
    }
    Ok(())
}

fn sequence_empty(n: &NodeInfo, _: &Inputs<'_>) -> OpResult {
    let code = n.attrs.int("dtype", 1)?;
    let elem = i32::try_from(code)
        .ok()
        .and_then(ElemType::from_onnx)
        .ok_or_else(|| OpError::new(format!("unsupported dtype {code}")))?;
    Ok(vec![Value::Sequence(elem, Vec::new())])
}

fn sequence_construct(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let items: Vec<Tensor> = i.tensors()?.into_iter().cloned().collect();
    let first = items
        .first()
        .ok_or_else(|| OpError::new("SequenceConstruct needs at least one input"))?;
    let elem = first.elem_type();
    for t in &items {
        need_elem(t, elem)?;
    }
    Ok(vec![Value::Sequence(elem, items)])
}

fn sequence_insert(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (elem, items) = sequence(i, 0)?;
    let t = i.tensor(1)?;
    need_elem(t, elem)?;
    let at = match i.opt(2)? {
        Some(p) => position(p, items.len(), true)?,
        None => items.len(),
    };
    let mut out = items.to_vec();
    out.insert(at, t.clone());
    Ok(vec![Value::Sequence(elem, out)])
}

fn sequence_erase(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (elem, items) = sequence(i, 0)?;
    if items.is_empty() {
        return Err(OpError::new("cannot erase from an empty sequence"));
    }
    let at = match i.opt(1)? {
        Some(p) => position(p, items.len(), false)?,
        None => items.len() - 1,
    };
    let mut out = items.to_vec();
    out.remove(at);
    Ok(vec![Value::Sequence(elem, out)])
}

fn sequence_at(_: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (_, items) = sequence(i, 0)?;
    let at = position(i.tensor(1)?, items.len(), false)?;
    Ok(vec![Value::Tensor(items[at].clone())])
}

fn split_to_sequence(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let x = i.tensor(0)?;
    let a = axis_in(n.attrs.int("axis", 0)?, x.rank())?;
    let dim = x.shape()[a];
    let split = i.opt(1)?;
    let sizes: Vec<usize> = match split {
        None => vec![1; dim],
        Some(s) if s.rank() == 0 => {
            let each = usize::try_from(scalar_i64(s)?)
                .ok()
                .filter(|&e| e > 0)
                .ok_or_else(|| OpError::new("a scalar split must be positive"))?;
            (0..dim.div_ceil(each))
                .map(|k| each.min(dim - k * each))
                .collect()
        }
        Some(s) => ints(s)?
            .into_iter()
            .map(|v| usize::try_from(v).map_err(|_| OpError::new("negative split size")))
            .collect::<Result<_, _>>()?,
    };
    if sizes.iter().sum::<usize>() != dim {
        return Err(OpError::new(format!(
            "split sizes {sizes:?} do not add up to {dim}"
        )));
    }
    // keepdims only applies without a split input.
    let squeeze = split.is_none() && n.attrs.int("keepdims", 1)? == 0;
    let mut items = Vec::with_capacity(sizes.len());
    let mut start = 0;
    for s in sizes {
        let mut part = x.candle().narrow(a, start, s)?;
        if squeeze {
            part = part.squeeze(a)?;
        }
        items.push(x.with_data(part.contiguous()?)?);
        start += s;
    }
    Ok(vec![Value::Sequence(x.elem_type(), items)])
}

fn concat_from_sequence(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let (_, items) = sequence(i, 0)?;
    let first = items
        .first()
        .ok_or_else(|| OpError::new("cannot concatenate an empty sequence"))?;
    let axis = n
        .attrs
        .opt_int("axis")?
        .ok_or_else(|| OpError::new("attribute \"axis\" is required"))?;
    let new_axis = n.attrs.int("new_axis", 0)? != 0;
    for (k, t) in items.iter().enumerate() {
        let fits = t.elem_type() == first.elem_type()
            && t.rank() == first.rank()
            && (!new_axis || t.shape() == first.shape());
        if !fits {
            return Err(OpError::new(format!(
                "item {k} is {} {:?}, item 0 is {} {:?}",
                t.elem_type(),
                t.shape(),
                first.elem_type(),
                first.shape()
            )));
        }
    }
    let views: Vec<&candle_core::Tensor> = items.iter().map(Tensor::candle).collect();
    let joined = if new_axis {
        candle_core::Tensor::stack(&views, axis_in(axis, first.rank() + 1)?)?
    } else {
        let a = axis_in(axis, first.rank())?;
        for t in items {
            let same = t
                .shape()
                .iter()
                .zip(first.shape())
                .enumerate()
                .all(|(d, (x, y))| d == a || x == y);
            if !same {
                return Err(OpError::new(format!(
                    "shapes {:?} and {:?} differ off axis {a}",
                    t.shape(),
                    first.shape()
                )));
            }
        }
        candle_core::Tensor::cat(&views, a)?
    };
    Ok(vec![Value::Tensor(first.with_data(joined)?)])
}

// SequenceMap: the body runs once per item of the first input; sequence inputs
// contribute their item at that position, tensor inputs are passed whole. Each
// body output becomes a sequence output.
fn sequence_map(n: &NodeInfo, i: &Inputs<'_>) -> OpResult {
    let body = n.attrs.graph("body")?;
    let (_, first) = sequence(i, 0)?;
    let len = first.len();
    let args: Vec<&Value> = (0..body.formal_inputs)
        .map(|k| {
            i.value(k)
                .ok_or_else(|| OpError::new(format!("input {k} is required")))
        })
        .collect::<Result<_, _>>()?;
    for (k, v) in args.iter().enumerate() {
        if let Value::Sequence(_, items) = v {
            if items.len() != len {
                return Err(OpError::new(format!(
                    "input {k} has {} items, input 0 has {len}",
                    items.len()
                )));
            }
        }
    }
    let outputs = body.plan.outputs.len();
    if n.outputs != outputs {
        return Err(OpError::new(format!(
            "the body returns {outputs} outputs, the node declares {}",
            n.outputs
        )));
    }
    let mut results: Vec<Vec<Tensor>> = vec![Vec::with_capacity(len); outputs];
    for at in 0..len {
        let call = args
            .iter()
            .map(|v| match v {
                Value::Sequence(_, items) => Value::Tensor(items[at].clone()),
                other => (*other).clone(),
            })
            .collect();
        let outs = run_body(body, call, i)?;
        if outs.len() != outputs {
            return Err(OpError::new(format!(
                "item {at}: the body returned {} outputs, declares {outputs}",
                outs.len()
            )));
        }
        for (k, v) in outs.into_iter().enumerate() {
            match v {
                Value::Tensor(t) => results[k].push(t),
                other => {
                    return Err(OpError::new(format!(
                        "body output {k} is a {}, expected a tensor",
                        other.kind()
                    )))
                }
            }
        }
    }
    results
        .into_iter()
        .enumerate()
        .map(|(k, items)| {
            let elem = match items.first() {
                Some(t) => t.elem_type(),
                None => body
                    .output_elems
                    .get(k)
                    .copied()
                    .flatten()
                    .unwrap_or(ElemType::F32),
            };
            for t in &items {
                need_elem(t, elem)?;
            }
            Ok(Value::Sequence(elem, items))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::control::tests::{
        any, float_sequence, floats, graph, load, node, read, run, with_body,
    };
    use crate::ops::Attrs;

    fn info(attrs: &[(&str, i64)]) -> NodeInfo {
        let mut a = Attrs::default();
        for (k, v) in attrs {
            a.set(k, crate::ops::Attr::Int(*v));
        }
        NodeInfo {
            attrs: a,
            opset: 17,
            outputs: 1,
        }
    }

    fn call(op: &str, attrs: &[(&str, i64)], inputs: &[Option<&Value>]) -> OpResult {
        let kernel = lookup(op).expect("a sequence kernel");
        kernel(
            &info(attrs),
            &Inputs {
                values: inputs.to_vec(),
            },
        )
    }

    fn t(v: &[f32]) -> Value {
        floats(&[v.len()], v)
    }

    fn pos(p: i64) -> Value {
        Value::Tensor(Tensor::from_i64(&[], vec![p]).unwrap())
    }

    /// The first value of each item of a sequence output.
    fn heads(v: &Value) -> Vec<f32> {
        match v {
            Value::Sequence(_, items) => items.iter().map(|t| t.to_f32_vec().unwrap()[0]).collect(),
            other => panic!("expected a sequence, got a {}", other.kind()),
        }
    }

    #[test]
    fn insert_erase_and_at_follow_positions_from_either_end() {
        let s = call(
            "SequenceConstruct",
            &[],
            &[Some(&t(&[1.0])), Some(&t(&[2.0]))],
        )
        .unwrap();
        let s = call(
            "SequenceInsert",
            &[],
            &[Some(&s[0]), Some(&t(&[0.0])), Some(&pos(0))],
        )
        .unwrap();
        assert_eq!(heads(&s[0]), vec![0.0, 1.0, 2.0]);
        let s = call(
            "SequenceInsert",
            &[],
            &[Some(&s[0]), Some(&t(&[3.0])), None],
        )
        .unwrap();
        assert_eq!(heads(&s[0]), vec![0.0, 1.0, 2.0, 3.0]);
        let s = call("SequenceErase", &[], &[Some(&s[0]), Some(&pos(-3))]).unwrap();
        assert_eq!(heads(&s[0]), vec![0.0, 2.0, 3.0]);
        let at = call("SequenceAt", &[], &[Some(&s[0]), Some(&pos(-1))]).unwrap();
        assert_eq!(read(&at[0]).1, vec![3.0]);
        let len = call("SequenceLength", &[], &[Some(&s[0])]).unwrap();
        assert_eq!(len[0].as_tensor().unwrap().to_i64_vec().unwrap(), vec![3]);
    }

    #[test]
    fn sequence_at_out_of_range_is_an_error() {
        let s = Value::Sequence(
            ElemType::F32,
            vec![Tensor::from_f32(&[], vec![1.0]).unwrap()],
        );
        for p in [1, -2] {
            let err = call("SequenceAt", &[], &[Some(&s), Some(&pos(p))]).unwrap_err();
            assert!(err.message.contains("out of range"), "{err}");
        }
    }

    #[test]
    fn erasing_from_an_empty_sequence_is_an_error() {
        let s = call("SequenceEmpty", &[], &[]).unwrap();
        assert!(matches!(&s[0], Value::Sequence(ElemType::F32, items) if items.is_empty()));
        assert!(call("SequenceErase", &[], &[Some(&s[0])]).is_err());
    }

    #[test]
    fn a_tensor_of_another_element_type_does_not_fit_a_sequence() {
        let s = Value::Sequence(ElemType::F32, Vec::new());
        let err = call("SequenceInsert", &[], &[Some(&s), Some(&pos(0))]).unwrap_err();
        assert!(err.message.contains("does not fit"), "{err}");
        let err = call("SequenceConstruct", &[], &[Some(&t(&[1.0])), Some(&pos(0))]);
        assert!(err.is_err());
    }

    #[test]
    fn a_scalar_split_leaves_a_shorter_last_chunk() {
        let x = t(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        let s = call("SplitToSequence", &[], &[Some(&x), Some(&pos(2))]).unwrap();
        let Value::Sequence(_, items) = &s[0] else {
            panic!("not a sequence")
        };
        let shapes: Vec<_> = items.iter().map(|t| t.shape().to_vec()).collect();
        assert_eq!(shapes, vec![vec![2], vec![2], vec![1]]);
    }

    #[test]
    fn split_without_sizes_drops_the_axis_when_keepdims_is_0() {
        let x = floats(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let s = call(
            "SplitToSequence",
            &[("axis", 1), ("keepdims", 0)],
            &[Some(&x)],
        )
        .unwrap();
        let joined = call("ConcatFromSequence", &[("axis", 0)], &[Some(&s[0])]).unwrap();
        assert_eq!(read(&joined[0]), (vec![4], vec![1.0, 3.0, 2.0, 4.0]));
        let stacked = call(
            "ConcatFromSequence",
            &[("axis", -1), ("new_axis", 1)],
            &[Some(&s[0])],
        )
        .unwrap();
        assert_eq!(read(&stacked[0]), (vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]));
    }

    #[test]
    fn concat_without_an_axis_or_of_an_empty_sequence_is_an_error() {
        let s = Value::Sequence(
            ElemType::F32,
            vec![Tensor::from_f32(&[1], vec![1.0]).unwrap()],
        );
        assert!(call("ConcatFromSequence", &[], &[Some(&s)]).is_err());
        let empty = Value::Sequence(ElemType::F32, Vec::new());
        assert!(call("ConcatFromSequence", &[("axis", 0)], &[Some(&empty)]).is_err());
    }

    #[test]
    fn optionals_hold_a_value_or_nothing() {
        let none = call("Optional", &[], &[None]).unwrap();
        assert!(matches!(none[0], Value::None));
        let has = |v: Option<&Value>| {
            let out = call("OptionalHasElement", &[], &[v]).unwrap();
            out[0].as_tensor().unwrap().to_i64_vec().unwrap()[0] == 1
        };
        assert!(!has(Some(&none[0])));
        assert!(!has(None));
        assert!(has(Some(&t(&[1.0]))));
        let err = call("OptionalGetElement", &[], &[Some(&none[0])]).unwrap_err();
        assert!(err.message.contains("empty"), "{err}");
        let got = call("OptionalGetElement", &[], &[Some(&t(&[7.0]))]).unwrap();
        assert_eq!(read(&got[0]).1, vec![7.0]);
    }

    #[test]
    fn sequence_map_pairs_items_and_passes_tensors_whole() {
        let body = graph(
            vec![node("Add", &["item", "bias"], &["out"])],
            vec![any("item"), any("bias")],
            &["out"],
        );
        let map = with_body(node("SequenceMap", &["s", "b"], &["mapped"]), "body", body);
        let m = load(
            graph(vec![map], vec![float_sequence("s"), any("b")], &["mapped"]),
            17,
        )
        .unwrap();
        let s = Value::Sequence(
            ElemType::F32,
            vec![
                Tensor::from_f32(&[1], vec![1.0]).unwrap(),
                Tensor::from_f32(&[2], vec![2.0, 3.0]).unwrap(),
            ],
        );
        let out = run(&m, vec![("s", s), ("b", floats(&[], &[10.0]))]).unwrap();
        assert_eq!(heads(&out[0]), vec![11.0, 12.0]);
        let empty = Value::Sequence(ElemType::F32, Vec::new());
        let out = run(&m, vec![("s", empty), ("b", floats(&[], &[10.0]))]).unwrap();
        assert!(heads(&out[0]).is_empty());
    }
}
