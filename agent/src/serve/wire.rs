//! The Open Inference Protocol v2 REST bodies: the inference request (JSON, or a
//! JSON header followed by raw tensor bytes under the binary tensor data
//! extension) and the inference response, as Triton, KServe and MLServer speak
//! them.
//!
//! Request: `{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype",
//! "parameters"?, "data"?}], "outputs"?: [{"name", "parameters"?}]}`. An input
//! whose `parameters.binary_data_size` is set takes that many bytes, in input
//! order, from after the JSON header (whose length is the
//! `Inference-Header-Content-Length` request header). Outputs are binary when
//! their `parameters.binary_data` is true, or, absent that, when the request's
//! `parameters.binary_data_output` is.
//!
//! Response: `{"model_name", "model_version", "id"?, "outputs": [{"name",
//! "datatype", "shape", "data" | "parameters": {"binary_data_size"}}]}`, the raw
//! bytes of binary outputs following the JSON in output order.
//!
//! It does not check inputs against a signature (that is [`super::validate`]).

use flotilla_protocol::manifest::ModelSignature;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::datatype::DataType;
use super::error::ServeError;
use super::tensors::{NamedTensor, TensorData, Values};

/// The request header naming the JSON part's length (binary extension).
pub(crate) const HEADER_LENGTH: &str = "inference-header-content-length";

/// Most inputs, and separately most requested outputs, one request may name.
const MAX_TENSORS: usize = 4096;

#[derive(Deserialize)]
struct RequestJson<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow)]
    inputs: Vec<InputJson<'a>>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

#[derive(Deserialize)]
struct InputJson<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    /// Kept as text until the datatype is known (see `json_data`).
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

/// An output the caller asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestedOutput {
    pub(crate) name: String,
    /// `parameters.binary_data`, when given.
    pub(crate) binary: Option<bool>,
}

/// A decoded inference request.
#[derive(Debug, Clone)]
pub(crate) struct InferRequest {
    pub(crate) id: Option<String>,
    pub(crate) inputs: Vec<NamedTensor>,
    /// `None`: every output of the model.
    pub(crate) outputs: Option<Vec<RequestedOutput>>,
    /// `parameters.binary_data_output`.
    pub(crate) binary_output: bool,
}

/// Decodes a request body; `header_len` is the `Inference-Header-Content-Length`
/// header, when sent.
///
/// # Errors
///
/// [`ServeError::Malformed`] for a body that is not a request (bad JSON, a header
/// length past the body, binary sizes that do not add up, an unknown datatype),
/// [`ServeError::Invalid`] for values that do not fit their shape and datatype.
pub(crate) fn decode_request(
    body: &[u8],
    header_len: Option<usize>,
) -> Result<InferRequest, ServeError> {
    let (json, mut binary) = match header_len {
        Some(n) if n > body.len() => {
            return Err(ServeError::Malformed(format!(
                "Inference-Header-Content-Length is {n}, but the body holds {} bytes",
                body.len()
            )))
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let req: RequestJson<'_> = serde_json::from_slice(json)
        .map_err(|e| ServeError::Malformed(format!("malformed inference request: {e}")))?;
    if req.inputs.len() > MAX_TENSORS || req.outputs.as_ref().is_some_and(|o| o.len() > MAX_TENSORS)
    {
        return Err(ServeError::Malformed(format!(
            "a request names at most {MAX_TENSORS} inputs and {MAX_TENSORS} outputs"
        )));
    }
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let name = input.name;
        let datatype = DataType::parse(&input.datatype).ok_or_else(|| {
            ServeError::Malformed(format!(
                "input {name:?}: unknown datatype {:?}; expected one of {}",
                input.datatype,
                DataType::NAMES
            ))
        })?;
        let shape = input
            .shape
            .iter()
            .map(|d| usize::try_from(*d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                ServeError::Invalid(format!(
                    "input {name:?}: shape {:?} has a negative dim",
                    input.shape
                ))
            })?;
        let binary_size = param_u64(input.parameters.as_ref(), "binary_data_size")
            .map_err(|e| ServeError::Malformed(format!("input {name:?}: {e}")))?;
        let data = match (binary_size, &input.data) {
            (Some(_), Some(_)) => {
                return Err(ServeError::Malformed(format!(
                    "input {name:?} has both data and parameters.binary_data_size"
                )))
            }
            (Some(size), None) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(ServeError::Malformed(format!(
                        "input {name:?}: binary_data_size is {size}, but only {} bytes of \
                         binary data remain",
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                TensorData::from_binary(&name, datatype, shape, mine)
            }
            (None, Some(data)) => TensorData::from_json(&name, datatype, shape, data.get()),
            (None, None) => {
                return Err(ServeError::Malformed(format!(
                    "input {name:?} has neither data nor parameters.binary_data_size"
                )))
            }
        }
        .map_err(ServeError::Invalid)?;
        inputs.push(NamedTensor { name, data });
    }
    if !binary.is_empty() {
        return Err(ServeError::Malformed(format!(
            "{} bytes of binary data follow the inputs' binary_data_size",
            binary.len()
        )));
    }
    let outputs = match req.outputs {
        None => None,
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for o in list {
                let params = o.parameters.as_ref();
                if params.is_some_and(|p| p.contains_key("classification")) {
                    return Err(ServeError::Invalid(format!(
                        "output {:?}: the classification extension is not supported",
                        o.name
                    )));
                }
                let binary = param_bool(params, "binary_data")
                    .map_err(|e| ServeError::Malformed(format!("output {:?}: {e}", o.name)))?;
                out.push(RequestedOutput {
                    name: o.name,
                    binary,
                });
            }
            Some(out)
        }
    };
    let binary_output = param_bool(req.parameters.as_ref(), "binary_data_output")
        .map_err(ServeError::Malformed)?
        .unwrap_or(false);
    Ok(InferRequest {
        id: req.id,
        inputs,
        outputs,
        binary_output,
    })
}

fn param_u64(p: Option<&Map<String, Value>>, key: &str) -> Result<Option<u64>, String> {
    match p.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("parameters.{key} must be a non-negative integer, got {v}")),
    }
}

fn param_bool(p: Option<&Map<String, Value>>, key: &str) -> Result<Option<bool>, String> {
    match p.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| format!("parameters.{key} must be true or false, got {v}")),
    }
}

/// Checks that every requested output is one the model declares.
///
/// # Errors
///
/// [`ServeError::Invalid`] naming the unknown output and the declared ones.
pub(crate) fn check_outputs(sig: &ModelSignature, req: &InferRequest) -> Result<(), ServeError> {
    let Some(wanted) = &req.outputs else {
        return Ok(());
    };
    for o in wanted {
        if !sig.outputs.iter().any(|s| s.name == o.name) {
            let names: Vec<&str> = sig.outputs.iter().map(|s| s.name.as_str()).collect();
            return Err(ServeError::Invalid(format!(
                "unknown output {:?}; the model gives {names:?}",
                o.name
            )));
        }
    }
    Ok(())
}

/// An encoded response body.
#[derive(Debug)]
pub(crate) struct EncodedResponse {
    pub(crate) body: Vec<u8>,
    /// The JSON part's length when binary outputs follow it (the
    /// `Inference-Header-Content-Length` response header).
    pub(crate) json_len: Option<usize>,
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputOut<'a>>,
}

#[derive(Serialize)]
struct OutputOut<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Values>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// Encodes the response for `req` from the model's `outputs` (graph order).
///
/// # Errors
///
/// [`ServeError::Execution`] when a requested output did not come back.
pub(crate) fn encode_response(
    model_name: &str,
    model_version: &str,
    req: &InferRequest,
    outputs: &[NamedTensor],
) -> Result<EncodedResponse, ServeError> {
    let chosen: Vec<(&NamedTensor, bool)> = match &req.outputs {
        None => outputs.iter().map(|o| (o, req.binary_output)).collect(),
        Some(wanted) => wanted
            .iter()
            .map(|w| {
                let o = outputs.iter().find(|o| o.name == w.name).ok_or_else(|| {
                    ServeError::Execution(format!("the model gave no output {:?}", w.name))
                })?;
                Ok((o, w.binary.unwrap_or(req.binary_output)))
            })
            .collect::<Result<_, ServeError>>()?,
    };
    let mut tail = Vec::new();
    let mut json_outputs = Vec::with_capacity(chosen.len());
    for (o, binary) in &chosen {
        let (parameters, data) = if *binary {
            let bytes = o.data.to_binary();
            let size = bytes.len();
            tail.extend_from_slice(&bytes);
            (
                Some(BinarySize {
                    binary_data_size: size,
                }),
                None,
            )
        } else {
            (None, Some(&o.data.values))
        };
        json_outputs.push(OutputOut {
            name: &o.name,
            datatype: o.data.datatype.name(),
            shape: &o.data.shape,
            parameters,
            data,
        });
    }
    let response = ResponseJson {
        model_name,
        model_version,
        id: req.id.as_deref(),
        outputs: json_outputs,
    };
    let mut body = serde_json::to_vec(&response)
        .map_err(|e| ServeError::Execution(format!("encoding the response: {e}")))?;
    let any_binary = chosen.iter().any(|(_, b)| *b);
    let json_len = any_binary.then_some(body.len());
    body.extend_from_slice(&tail);
    Ok(EncodedResponse { body, json_len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body_with_binary(header: &Value, binary: &[u8]) -> (Vec<u8>, usize) {
        let mut body = serde_json::to_vec(header).unwrap();
        let n = body.len();
        body.extend_from_slice(binary);
        (body, n)
    }

    #[test]
    fn binary_inputs_take_their_bytes_in_order() {
        let a: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let b: Vec<u8> = [7i64].iter().flat_map(|x| x.to_le_bytes()).collect();
        let header = json!({"inputs": [
            {"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
            {"name": "b", "shape": [1], "datatype": "INT64", "parameters": {"binary_data_size": 8}},
        ]});
        let (body, n) = body_with_binary(&header, &[a, b].concat());
        let req = decode_request(&body, Some(n)).unwrap();
        assert_eq!(req.inputs[0].data.values, Values::F32(vec![1.0, 2.0]));
        assert_eq!(req.inputs[1].data.values, Values::I64(vec![7]));
    }

    #[test]
    fn leftover_or_missing_binary_bytes_are_malformed() {
        let header = json!({"inputs": [
            {"name": "a", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}},
        ]});
        let (body, n) = body_with_binary(&header, &[0; 6]);
        let err = decode_request(&body, Some(n)).unwrap_err();
        assert!(matches!(err, ServeError::Malformed(_)), "{err:?}");
        let (body, n) = body_with_binary(&header, &[0; 2]);
        let err = decode_request(&body, Some(n)).unwrap_err();
        assert!(err.to_string().contains("only 2 bytes"), "{err}");
        let err = decode_request(&body, Some(body.len() + 1)).unwrap_err();
        assert!(
            err.to_string().contains("Inference-Header-Content-Length"),
            "{err}"
        );
    }

    #[test]
    fn malformed_json_and_unknown_datatypes_are_malformed() {
        let err = decode_request(b"{\"inputs\": [", None).unwrap_err();
        assert!(matches!(err, ServeError::Malformed(_)), "{err:?}");
        let body =
            json!({"inputs": [{"name": "a", "shape": [1], "datatype": "FLOAT", "data": [1]}]});
        let err = decode_request(&serde_json::to_vec(&body).unwrap(), None).unwrap_err();
        assert!(
            err.to_string().contains("unknown datatype \"FLOAT\""),
            "{err}"
        );
    }

    #[test]
    fn binary_outputs_follow_the_json_and_are_sized_in_parameters() {
        let body = json!({
            "id": "r1",
            "inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1.0]}],
            "outputs": [{"name": "y", "parameters": {"binary_data": true}}, {"name": "z"}],
        });
        let req = decode_request(&serde_json::to_vec(&body).unwrap(), None).unwrap();
        let out = |name: &str, v: Vec<f32>| NamedTensor {
            name: name.into(),
            data: TensorData {
                datatype: DataType::Fp32,
                shape: vec![v.len()],
                values: Values::F32(v),
            },
        };
        let outputs = vec![out("z", vec![3.0]), out("y", vec![1.0, 2.0])];
        let enc = encode_response("m", "1", &req, &outputs).unwrap();
        let n = enc.json_len.unwrap();
        let head: Value = serde_json::from_slice(&enc.body[..n]).unwrap();
        assert_eq!(head["id"], "r1");
        assert_eq!(head["outputs"][0]["name"], "y");
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(head["outputs"][1]["data"], json!([3.0]));
        assert_eq!(
            &enc.body[n..],
            &[1.0f32.to_le_bytes(), 2.0f32.to_le_bytes()].concat()
        );
    }
}
