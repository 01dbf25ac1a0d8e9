//! Runs a [`Plan`]: writes the inputs into their slots, calls each step's kernel in
//! order, drops intermediates after their last use, and reads the outputs.
//!
//! A run owns its slots, so any number of runs of one plan may proceed at once on
//! different threads. Subgraph bodies run the same way ([`run_body`]), each call
//! on fresh slots of its own. This module does not validate inputs against the
//! graph's declared types ([`crate::model`] does) and does not plan.

use crate::error::RunError;
use crate::ops::{Inputs, Kernel, NodeInfo, OpError, OpResult};
use crate::plan::{Plan, Src, Subgraph};
use crate::value::Value;

/// Runs `plan` with `inputs` (one value per plan input, in order) and returns the
/// graph outputs in order.
pub(crate) fn run(plan: &Plan, inputs: Vec<Value>) -> Result<Vec<Value>, RunError> {
    let mut slots: Vec<Option<Value>> = vec![None; plan.slot_count];
    for (input, value) in plan.inputs.iter().zip(inputs) {
        slots[input.slot] = Some(value);
    }
    for step in &plan.steps {
        let node_err = |message: String| RunError::Node {
            node: step.name.clone(),
            op_type: step.op_type.clone(),
            message,
        };
        let outs = {
            let values = step
                .inputs
                .iter()
                .map(|src| match src {
                    None => None,
                    Some(Src::Const(c)) => plan.constants.get(*c),
                    Some(Src::Slot(s)) => slots.get(*s).and_then(Option::as_ref),
                })
                .collect();
            call_kernel(step.kernel, &step.info, &Inputs { values })
                .map_err(|e| node_err(e.message))?
        };
        let mut outs = outs.into_iter();
        for slot in &step.outputs {
            let value = outs.next();
            if let Some(s) = slot {
                match value {
                    Some(v) => slots[*s] = Some(v),
                    None => {
                        return Err(node_err(format!(
                            "produced fewer outputs than the {} declared",
                            step.outputs.len()
                        )))
                    }
                }
            }
        }
        for s in &step.free {
            slots[*s] = None;
        }
    }
    let outputs = &plan.outputs;
    outputs
        .iter()
        .enumerate()
        .map(|(k, (name, src))| {
            let v = match src {
                Src::Const(c) => plan.constants.get(*c).cloned(),
                // A slot that a later output reads too is copied, not moved.
                Src::Slot(s) if outputs[k + 1..].iter().any(|(_, o)| o == src) => {
                    slots.get(*s).cloned().flatten()
                }
                Src::Slot(s) => slots.get_mut(*s).and_then(Option::take),
            };
            v.ok_or_else(|| RunError::MissingOutput { name: name.clone() })
        })
        .collect()
}

/// Runs one iteration (or branch) of a node's body: `args` are the body's
/// declared inputs; its captured outer values are read from the owning node's
/// `inputs`. Returns the body's outputs in order.
///
/// # Errors
///
/// When `args` does not match the body's declared inputs, a captured value is
/// missing, or the body fails (its error is kept as the message).
pub(crate) fn run_body(body: &Subgraph, args: Vec<Value>, inputs: &Inputs<'_>) -> OpResult {
    if args.len() != body.formal_inputs {
        return Err(OpError::new(format!(
            "the body declares {} inputs, the operator passes {}",
            body.formal_inputs,
            args.len()
        )));
    }
    let mut values = args;
    for &at in &body.capture_at {
        let v = inputs
            .value(at)
            .ok_or_else(|| OpError::new("internal: a captured outer value is missing"))?;
        values.push(v.clone());
    }
    run(&body.plan, values).map_err(|e| OpError::new(format!("in body: {e}")))
}

/// Calls a kernel, turning a panic inside candle into an error.
///
/// Design: kernels check what they can, but candle asserts internally on some
/// shape combinations; a model must never take the process down.
pub(crate) fn call_kernel(kernel: Kernel, info: &NodeInfo, inputs: &Inputs<'_>) -> OpResult {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| kernel(info, inputs)))
        .unwrap_or_else(|_| Err(OpError::new("kernel panicked (reported as an error)")))
}

#[cfg(test)]
mod tests {
    use crate::ops::control::tests::{any, floats, graph, load, node, read, run};

    #[test]
    fn a_value_returned_twice_is_copied_not_moved() {
        let g = graph(
            vec![node("Neg", &["x"], &["y"])],
            vec![any("x")],
            &["y", "y", "x"],
        );
        let m = load(g, 17).unwrap();
        let out = run(&m, vec![("x", floats(&[1], &[2.0]))]).unwrap();
        assert_eq!(read(&out[0]), read(&out[1]));
        assert_eq!(read(&out[2]), (vec![1], vec![2.0]));
    }
}
