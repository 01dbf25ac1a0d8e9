//! Checks decoded request inputs against a model's signature before anything
//! runs: every declared input present once, no other input, the declared
//! datatype, the declared rank and fixed dims, and one size per symbolic dim
//! name across inputs. Every message names the input and what was expected.
//!
//! Element counts are checked while decoding ([`super::tensors`]); operator-level
//! shape agreement is the runtime's.

use std::collections::HashMap;

use flotilla_protocol::manifest::{Dim, ModelSignature};

use super::datatype::{metadata_shape, spec_text, DataType};
use super::tensors::NamedTensor;

/// Checks `inputs` against `sig`; returns them in the signature's order.
///
/// # Errors
///
/// A one-line message naming the first input at fault and what was expected.
pub(crate) fn check_inputs(
    sig: &ModelSignature,
    inputs: Vec<NamedTensor>,
) -> Result<Vec<NamedTensor>, String> {
    let mut by_name: HashMap<String, NamedTensor> = HashMap::with_capacity(inputs.len());
    for input in inputs {
        if !sig.inputs.iter().any(|s| s.name == input.name) {
            let takes: Vec<String> = sig
                .inputs
                .iter()
                .map(|s| format!("{:?} ({})", s.name, spec_text(s)))
                .collect();
            return Err(format!(
                "unknown input {:?}; the model takes {}",
                input.name,
                takes.join(", ")
            ));
        }
        if by_name.contains_key(&input.name) {
            return Err(format!("input {:?} is given more than once", input.name));
        }
        by_name.insert(input.name.clone(), input);
    }
    let mut symbols: HashMap<&str, (usize, &str)> = HashMap::new();
    let mut ordered = Vec::with_capacity(sig.inputs.len());
    for spec in &sig.inputs {
        let Some(input) = by_name.remove(&spec.name) else {
            return Err(format!(
                "missing input {:?} (expected {})",
                spec.name,
                spec_text(spec)
            ));
        };
        let expected = DataType::of_element(spec.elem_type);
        if input.data.datatype != expected {
            return Err(format!(
                "input {:?}: expected datatype {}, got {}",
                spec.name,
                expected.name(),
                input.data.datatype.name()
            ));
        }
        if let Some(dims) = &spec.shape {
            let got = &input.data.shape;
            let fits = dims.len() == got.len()
                && dims.iter().zip(got).all(|(d, g)| match d {
                    Dim::Fixed(n) => u64::try_from(*g).is_ok_and(|g| g == *n),
                    Dim::Symbolic(_) | Dim::Unknown => true,
                });
            if !fits {
                return Err(format!(
                    "input {:?}: expected shape {:?}, got {got:?}",
                    spec.name,
                    metadata_shape(spec)
                ));
            }
            for (d, g) in dims.iter().zip(got) {
                let Dim::Symbolic(sym) = d else { continue };
                match symbols.get(sym.as_str()) {
                    Some((size, other)) if size != g => {
                        return Err(format!(
                            "input {:?}: dim {sym:?} is {g}, but input {other:?} has it {size}",
                            spec.name
                        ));
                    }
                    Some(_) => {}
                    None => {
                        symbols.insert(sym, (*g, &spec.name));
                    }
                }
            }
        }
        ordered.push(input);
    }
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::tensors::{TensorData, Values};
    use flotilla_protocol::manifest::{ElementType, TensorSpec};

    fn sig() -> ModelSignature {
        let spec = |name: &str, shape| TensorSpec {
            name: name.into(),
            elem_type: ElementType::Float32,
            shape: Some(shape),
        };
        ModelSignature {
            inputs: vec![
                spec("a", vec![Dim::Symbolic("batch".into()), Dim::Fixed(2)]),
                spec("b", vec![Dim::Symbolic("batch".into())]),
            ],
            outputs: vec![],
        }
    }

    fn input(name: &str, t: DataType, shape: Vec<usize>) -> NamedTensor {
        let n = shape.iter().product();
        NamedTensor {
            name: name.into(),
            data: TensorData {
                datatype: t,
                shape,
                values: Values::F32(vec![0.0; n]),
            },
        }
    }

    #[test]
    fn inputs_come_back_in_signature_order() {
        let got = check_inputs(
            &sig(),
            vec![
                input("b", DataType::Fp32, vec![3]),
                input("a", DataType::Fp32, vec![3, 2]),
            ],
        )
        .unwrap();
        assert_eq!(got[0].name, "a");
    }

    #[test]
    fn a_wrong_datatype_names_the_input_and_the_expected_type() {
        let err = check_inputs(
            &sig(),
            vec![
                input("a", DataType::Fp64, vec![1, 2]),
                input("b", DataType::Fp32, vec![1]),
            ],
        )
        .unwrap_err();
        assert_eq!(err, "input \"a\": expected datatype FP32, got FP64");
    }

    #[test]
    fn a_wrong_fixed_dim_or_rank_names_the_expected_shape() {
        let err = check_inputs(
            &sig(),
            vec![
                input("a", DataType::Fp32, vec![1, 3]),
                input("b", DataType::Fp32, vec![1]),
            ],
        )
        .unwrap_err();
        assert_eq!(err, "input \"a\": expected shape [-1, 2], got [1, 3]");
        let err = check_inputs(&sig(), vec![input("a", DataType::Fp32, vec![2])]).unwrap_err();
        assert!(err.contains("expected shape [-1, 2], got [2]"), "{err}");
    }

    #[test]
    fn a_symbolic_dim_must_agree_across_inputs() {
        let err = check_inputs(
            &sig(),
            vec![
                input("a", DataType::Fp32, vec![2, 2]),
                input("b", DataType::Fp32, vec![3]),
            ],
        )
        .unwrap_err();
        assert!(err.contains("dim \"batch\" is 3"), "{err}");
    }

    #[test]
    fn missing_unknown_and_repeated_inputs_are_named() {
        let err = check_inputs(&sig(), vec![input("a", DataType::Fp32, vec![1, 2])]).unwrap_err();
        assert_eq!(err, "missing input \"b\" (expected FP32 [-1])");
        let err = check_inputs(&sig(), vec![input("c", DataType::Fp32, vec![1])]).unwrap_err();
        assert!(err.starts_with("unknown input \"c\"; the model takes \"a\" (FP32 [-1, 2])"));
        let a = input("a", DataType::Fp32, vec![1, 2]);
        let err = check_inputs(&sig(), vec![a.clone(), a]).unwrap_err();
        assert!(err.contains("more than once"), "{err}");
    }
}
