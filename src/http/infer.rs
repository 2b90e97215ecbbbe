//! An HTTP inference body to the core's request: the JSON header, tensors as JSON `data`
//! (flat or nested) or as bytes after the header (Triton's binary tensor extension,
//! `Inference-Header-Content-Length`), the raw one-input form, and which outputs the
//! answer (`answer`) sends as bytes.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{value::RawValue, Map, Value};

use super::{
    error::HttpError,
    extensions,
    numbers::{self, MAX_NESTING},
};
use crate::{
    error::InferError,
    grpc::{
        convert::decode_input,
        pb::{model_infer_request::InferInputTensor, InferTensorContents},
    },
    metrics::Protocol,
    repository::spec::ModelSpec,
    request::InferRequest,
    shared_memory::{OutputWindows, SharedMemory},
    tensor::{shape_string, DataType, Tensor},
};

#[derive(Debug, Deserialize)]
struct Header {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputHeader>,
    #[serde(default)]
    outputs: Option<Vec<OutputHeader>>,
}

#[derive(Debug, Deserialize)]
struct InputHeader {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    /// Kept as text until the datatype is known, so numbers are read straight into
    /// the tensor's bytes (`numbers`) with no JSON tree between.
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

#[derive(Debug, Deserialize)]
struct OutputHeader {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// A decoded body: the core's request, and which outputs go back as bytes.
#[derive(Debug)]
pub struct Decoded {
    pub request: InferRequest,
    pub binary: Binary,
    /// Outputs written into shared memory, sent with no data.
    pub windows: OutputWindows,
}

/// Which outputs the answer carries as bytes after its JSON header.
#[derive(Debug)]
pub enum Binary {
    /// By name (`binary_data` on an output), else `all` (`binary_data_output`).
    Chosen {
        named: Vec<(String, bool)>,
        all: bool,
    },
    /// A raw request's answer is all bytes.
    Everything,
}

/// Decodes `body`, whose first `header_len` bytes are JSON (None: all of it). A header of
/// length 0 is the raw form: the whole body is the one input of `spec`'s model.
pub fn decode(
    model_name: &str,
    model_version: &str,
    body: Bytes,
    header_len: Option<usize>,
    raw_spec: impl FnOnce() -> Result<ModelSpec, HttpError>,
    limit: usize,
    shm: &SharedMemory,
) -> Result<Decoded, HttpError> {
    // Only a declared length of 0 is the raw form; an empty body without one is empty JSON.
    if header_len == Some(0) {
        return decode_raw(model_name, model_version, body, raw_spec()?, limit);
    }
    let header_len = header_len.unwrap_or(body.len());
    if header_len > body.len() {
        return Err(HttpError::bad(format!(
            "Inference-Header-Content-Length is {header_len} but the body holds {} bytes; \
             the header length must lie within the body",
            body.len()
        )));
    }
    let header: Header = serde_json::from_slice(&body[..header_len])
        .map_err(|e| HttpError::bad(format!("the request's JSON: {e}")))?;
    let mut rest = body.slice(header_len..);
    let mut inputs = Vec::with_capacity(header.inputs.len());
    let mut total = 0usize;
    for input in header.inputs {
        let tensor = decode_one(input, &mut rest, limit, shm)?;
        total += tensor.byte_size();
        if total > limit {
            return Err(HttpError::bad(format!(
                "request tensors reach {total} bytes at input '{}', over the limit of {limit} bytes per request",
                tensor.name
            )));
        }
        inputs.push(tensor);
    }
    if !rest.is_empty() {
        return Err(HttpError::bad(format!(
            "unexpected additional input data for model '{model_name}': {} bytes after the last input's",
            rest.len()
        )));
    }
    let parameters = &header.parameters;
    if let Some(key) = parameters.keys().find(|k| k.starts_with("triton_")) {
        return Err(HttpError::bad(format!(
            "parameter '{key}' is reserved (keys starting with triton_ are Triton's)"
        )));
    }
    let outputs = header.outputs.unwrap_or_default();
    let mut named = Vec::with_capacity(outputs.len());
    let mut classification = Vec::new();
    let mut windows = Vec::new();
    for output in &outputs {
        if let Some(key) = output.parameters.keys().find(|k| {
            !matches!(k.as_str(), "binary_data" | "classification") && !extensions::is_shm_key(k)
        }) {
            return Err(HttpError::bad(format!(
                "output '{}': parameter '{key}' is not supported (only binary_data, classification and shared_memory_*)",
                output.name
            )));
        }
        let binary = bool_param(&output.parameters, "binary_data", &output.name)?;
        if let Some(params) = extensions::shm_params(&output.name, &output.parameters)? {
            let clash = if output.parameters.contains_key("classification") {
                Some("classification")
            } else if binary == Some(true) {
                Some("binary_data")
            } else {
                None
            };
            if let Some(clash) = clash {
                return Err(HttpError::bad(format!(
                    "Output can't set both 'shared_memory_region' and '{clash}' (output '{}')",
                    output.name
                )));
            }
            let window = params.window(shm).map_err(InferError::from)?;
            windows.push((output.name.clone(), window));
        }
        if let Some(binary) = binary {
            named.push((output.name.clone(), binary));
        }
        if let Some(count) = output.parameters.get("classification") {
            let count = count.as_i64().map(i128::from).ok_or_else(|| {
                HttpError::bad(format!(
                    "output '{}': 'classification' must be an integer class count, found {count}",
                    output.name
                ))
            })?;
            let count = crate::request::class_count(&output.name, count)?;
            classification.push((output.name.clone(), count));
        }
    }
    let request = InferRequest {
        model_name: model_name.to_owned(),
        model_version: model_version.to_owned(),
        id: header.id.unwrap_or_default(),
        inputs,
        outputs: outputs.into_iter().map(|o| o.name).collect(),
        classification,
        priority: uint_param(parameters, "priority")?,
        timeout: uint_param(parameters, "timeout")?.map(std::time::Duration::from_micros),
        deadline: None,
        protocol: Protocol::Http,
        trace: None,
    };
    let all = bool_param(parameters, "binary_data_output", "the request")?.unwrap_or(false);
    Ok(Decoded {
        request,
        binary: Binary::Chosen { named, all },
        windows,
    })
}

/// Triton's raw form: the body is the model's one input, batch 1 where it batches, its
/// one open dimension told by the byte count.
fn decode_raw(
    model_name: &str,
    model_version: &str,
    body: Bytes,
    spec: ModelSpec,
    limit: usize,
) -> Result<Decoded, HttpError> {
    let [input] = spec.inputs.as_slice() else {
        return Err(HttpError::bad(format!(
            "a raw request (Inference-Header-Content-Length: 0) is for a model with one input; \
             model '{model_name}' has {}",
            spec.inputs.len()
        )));
    };
    let mut shape: Vec<i64> = input.dims.clone();
    if spec.max_batch_size > 0 {
        shape.insert(0, 1);
    }
    let open: Vec<usize> = (0..shape.len()).filter(|&i| shape[i] < 0).collect();
    match (input.datatype.element_size(), open.as_slice()) {
        (_, []) => {}
        (Some(size), [at]) => {
            let known: i64 = shape.iter().filter(|d| **d >= 0).product();
            let per = known.max(1) as usize * size;
            if !body.len().is_multiple_of(per) {
                return Err(HttpError::bad(format!(
                    "raw input '{}': {} bytes is not a whole number of {} elements of shape {}",
                    input.name,
                    body.len(),
                    input.datatype,
                    shape_string(&shape)
                )));
            }
            shape[*at] = (body.len() / per) as i64;
        }
        (None, [at]) if shape.len() == 1 || (spec.max_batch_size > 0 && shape.len() == 2) => {
            shape[*at] = 1;
        }
        _ => {
            return Err(HttpError::bad(format!(
            "a raw request needs an input with at most one open dimension; input '{}' has shape {}",
            input.name,
            shape_string(&shape)
        )))
        }
    }
    let wire = InferInputTensor {
        name: input.name.clone(),
        datatype: input.datatype.as_str().to_owned(),
        shape,
        ..Default::default()
    };
    let tensor = decode_input(wire, Some(body), limit)?;
    Ok(Decoded {
        request: InferRequest {
            model_name: model_name.to_owned(),
            model_version: model_version.to_owned(),
            inputs: vec![tensor],
            protocol: Protocol::Http,
            ..Default::default()
        },
        binary: Binary::Everything,
        windows: Vec::new(),
    })
}

fn decode_one(
    input: InputHeader,
    rest: &mut Bytes,
    limit: usize,
    shm: &SharedMemory,
) -> Result<Tensor, HttpError> {
    let name = input.name;
    let bad = |what: String| HttpError::bad(format!("input '{name}': {what}"));
    if let Some(key) = input.parameters.keys().find(|k| {
        !matches!(k.as_str(), "binary_data_size" | "content_type") && !extensions::is_shm_key(k)
    }) {
        return Err(bad(format!(
            "parameter '{key}' is not supported (only binary_data_size, content_type and shared_memory_*)"
        )));
    }
    // MLServer's convention: BYTES elements given in JSON as base64 text.
    let base64 = match input.parameters.get("content_type") {
        None => false,
        Some(Value::String(t)) if t == "base64" && input.datatype == "BYTES" => true,
        Some(other) => {
            return Err(bad(format!(
                "content_type {other} is not supported (only \"base64\", for BYTES)"
            )))
        }
    };
    let binary_size = match input.parameters.get("binary_data_size") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            bad(format!(
                "binary_data_size must be a non-negative integer, found {v}"
            ))
        })?),
    };
    // Moved into the one branch that builds the tensor, not cloned.
    let datatype = DataType::parse(&input.datatype);
    let (datatype_name, shape) = (input.datatype, input.shape.clone());
    let wire_name = name.clone();
    let wire = move |contents| InferInputTensor {
        name: wire_name,
        datatype: datatype_name,
        shape,
        contents,
        ..Default::default()
    };
    if let Some(params) = extensions::shm_params(&name, &input.parameters)? {
        if binary_size.is_some() || input.data.is_some() {
            return Err(bad(
                "names a shared memory region and also sets `data` or binary_data_size; send its data one way".into(),
            ));
        }
        let bytes = params.read(shm, &name, limit).map_err(InferError::from)?;
        return Ok(decode_input(wire(None), Some(bytes), limit)?);
    }
    match (binary_size, input.data) {
        (Some(_), Some(_)) => Err(bad(
            "sets both `data` and binary_data_size; send its data one way".into(),
        )),
        (None, None) => Err(bad(
            "has neither `data` nor binary_data_size: give one".into()
        )),
        (Some(size), None) => {
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size > rest.len() {
                return Err(bad(format!(
                    "binary_data_size is {size} but only {} bytes follow in the body",
                    rest.len()
                )));
            }
            let bytes = rest.split_to(size);
            Ok(decode_input(wire(None), Some(bytes), limit)?)
        }
        (None, Some(data)) => {
            if let Some(half @ (DataType::Fp16 | DataType::Bf16)) = datatype {
                return Err(HttpError::bad(format!(
                    "receiving {half} data via JSON is not supported; use the binary data \
                     format (binary_data_size) for input '{name}'"
                )));
            }
            if let Some(datatype) = datatype.filter(|d| numbers::is_numeric(*d)) {
                let bytes = numbers::read(datatype, &data).map_err(bad)?;
                let count = bytes.len() / datatype.element_size().expect("numeric");
                // A negative or overflowing shape is named by `decode_input`.
                let shape = &input.shape;
                let needed = shape
                    .iter()
                    .try_fold(1i64, |n, d| n.checked_mul(*d).filter(|_| *d >= 0));
                if let Some(needed) = needed.filter(|n| *n != count as i64) {
                    return Err(bad(format!(
                        "`data` holds {count} values but shape {} needs {needed}",
                        shape_string(shape)
                    )));
                }
                return Ok(decode_input(wire(None), Some(bytes.into()), limit)?);
            }
            let data: Value =
                serde_json::from_str(data.get()).map_err(|e| bad(format!("`data`: {e}")))?;
            let mut flat = Vec::new();
            flatten(&data, 0, &mut flat).map_err(bad)?;
            // An unknown datatype is named by `decode_input`.
            let contents = match datatype {
                Some(datatype) => contents(datatype, &flat, base64).map_err(bad)?,
                None => InferTensorContents::default(),
            };
            Ok(decode_input(wire(Some(contents)), None, limit)?)
        }
    }
}

/// `data`'s elements in row-major order, nested arrays flattened.
fn flatten<'a>(value: &'a Value, depth: usize, out: &mut Vec<&'a Value>) -> Result<(), String> {
    match value {
        Value::Array(items) => {
            if depth >= MAX_NESTING {
                return Err(format!("`data` nests deeper than {MAX_NESTING} levels"));
            }
            for item in items {
                flatten(item, depth + 1, out)?;
            }
            Ok(())
        }
        other => {
            out.push(other);
            Ok(())
        }
    }
}

/// JSON elements in the typed field their datatype travels in over gRPC, so that both
/// front ends check counts and ranges the same way.
fn contents(
    datatype: DataType,
    flat: &[&Value],
    base64: bool,
) -> Result<InferTensorContents, String> {
    let expected = |i: usize, v: &Value, what: &str| {
        format!("`data` element {i} is {v}, expected {what} for {datatype}")
    };
    let ints = |what: &str| -> Result<Vec<i64>, String> {
        flat.iter()
            .enumerate()
            .map(|(i, v)| v.as_i64().ok_or_else(|| expected(i, v, what)))
            .collect()
    };
    let uints = |what: &str| -> Result<Vec<u64>, String> {
        flat.iter()
            .enumerate()
            .map(|(i, v)| v.as_u64().ok_or_else(|| expected(i, v, what)))
            .collect()
    };
    let floats = || -> Result<Vec<f64>, String> {
        flat.iter()
            .enumerate()
            .map(|(i, v)| v.as_f64().ok_or_else(|| expected(i, v, "a number")))
            .collect()
    };
    let range = |i: usize, v: &dyn std::fmt::Display| {
        format!("`data` element {i} is {v}, out of range for {datatype}")
    };
    let mut c = InferTensorContents::default();
    match datatype {
        DataType::Bool => {
            c.bool_contents = flat
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_bool().ok_or_else(|| expected(i, v, "true or false")))
                .collect::<Result<_, _>>()?
        }
        DataType::Int8 | DataType::Int16 | DataType::Int32 => {
            c.int_contents = ints("an integer")?
                .into_iter()
                .enumerate()
                .map(|(i, v)| i32::try_from(v).map_err(|_| range(i, &v)))
                .collect::<Result<_, _>>()?
        }
        DataType::Int64 => c.int64_contents = ints("an integer")?,
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => {
            c.uint_contents = uints("a non-negative integer")?
                .into_iter()
                .enumerate()
                .map(|(i, v)| u32::try_from(v).map_err(|_| range(i, &v)))
                .collect::<Result<_, _>>()?
        }
        DataType::Uint64 => c.uint64_contents = uints("a non-negative integer")?,
        DataType::Fp32 => c.fp32_contents = floats()?.into_iter().map(|v| v as f32).collect(),
        DataType::Fp64 => c.fp64_contents = floats()?,
        DataType::Bytes => {
            c.bytes_contents = flat
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let text = v.as_str().ok_or_else(|| expected(i, v, "a string"))?;
                    if !base64 {
                        return Ok(text.as_bytes().to_vec());
                    }
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(text.trim())
                        .map_err(|e| format!("`data` element {i} is not base64: {e}"))
                })
                .collect::<Result<_, _>>()?
        }
        DataType::Fp16 | DataType::Bf16 => unreachable!("refused before"),
    }
    Ok(c)
}

fn bool_param(
    params: &Map<String, Value>,
    key: &str,
    whose: &str,
) -> Result<Option<bool>, HttpError> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(HttpError::bad(format!(
            "{whose}: parameter '{key}' must be true or false, found {other}"
        ))),
    }
}

fn uint_param(params: &Map<String, Value>, key: &str) -> Result<Option<u64>, HttpError> {
    match params.get(key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            HttpError::bad(format!(
                "parameter '{key}' must be a non-negative integer, found {v}"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec() -> Result<ModelSpec, HttpError> {
        Err(HttpError::bad("no raw"))
    }

    fn decode_json(body: Value) -> Result<Decoded, HttpError> {
        decode(
            "m",
            "",
            body.to_string().into(),
            None,
            spec,
            1 << 20,
            &SharedMemory::disabled(),
        )
    }

    #[test]
    fn nested_and_flat_data_are_the_same_tensor() {
        let flat = decode_json(json!({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]})).unwrap();
        let nested = decode_json(json!({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}]})).unwrap();
        assert_eq!(
            flat.request.inputs[0].to_raw(),
            nested.request.inputs[0].to_raw()
        );
        let words = decode_json(json!({"inputs": [{"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["bc"]]}]})).unwrap();
        assert_eq!(
            words.request.inputs[0].to_raw().as_ref(),
            b"\x01\0\0\0a\x02\0\0\0bc"
        );
        let encoded = decode_json(json!({"inputs": [{"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"content_type": "base64"}, "data": ["YmM="]}]})).unwrap();
        assert_eq!(encoded.request.inputs[0].to_raw().as_ref(), b"\x02\0\0\0bc");
    }

    #[test]
    fn each_mistake_is_named() {
        let err = |body: Value| decode_json(body).unwrap_err().message;
        let x = |datatype: &str, shape: Value, data: Value| json!({"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]});
        assert!(err(x("FP32", json!([3]), json!([1, 2])))
            .contains("input 'x': `data` holds 2 values but shape [3] needs 3"));
        assert!(
            err(x("FP16", json!([1]), json!([1]))).contains("FP16 data via JSON is not supported")
        );
        assert!(err(x("INT8", json!([1]), json!([300])))
            .contains("element 0 is 300, out of range for INT8"));
        assert!(err(x("BOOL", json!([1]), json!([1]))).contains("expected true or false"));
        assert!(err(x("FP32", json!([1]), json!(["a"]))).contains("expected a number"));
        let mut deep = json!(1);
        for _ in 0..101 {
            deep = json!([deep]);
        }
        assert!(err(x("FP32", json!([1]), deep)).contains("nests deeper than 100"));
        assert!(
            err(json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}))
                .contains("neither `data` nor binary_data_size")
        );
        let e = decode(
            "m",
            "",
            Bytes::from_static(b"{}"),
            Some(9),
            spec,
            1 << 20,
            &SharedMemory::disabled(),
        )
        .unwrap_err();
        assert!(
            e.message.contains("must lie within the body"),
            "{}",
            e.message
        );
        assert!(err(json!({"parameters": {"triton_x": 1}, "inputs": []})).contains("reserved"));
        // No declared header length and no body: empty JSON, not the raw form.
        let empty = decode(
            "m",
            "",
            Bytes::new(),
            None,
            spec,
            1 << 20,
            &SharedMemory::disabled(),
        )
        .unwrap_err();
        assert!(
            empty.message.contains("the request's JSON"),
            "{}",
            empty.message
        );
    }

    #[test]
    fn binary_inputs_follow_the_header_and_leftovers_are_refused() {
        let header = json!({"inputs": [{"name": "x", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 8}}]}).to_string();
        let mut body = header.clone().into_bytes();
        body.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        let ok = decode(
            "m",
            "",
            body.clone().into(),
            Some(header.len()),
            spec,
            1 << 20,
            &SharedMemory::disabled(),
        )
        .unwrap();
        assert_eq!(
            ok.request.inputs[0].to_raw().as_ref(),
            &[1, 0, 0, 0, 2, 0, 0, 0]
        );
        body.push(9);
        let extra = decode(
            "m",
            "",
            body.into(),
            Some(header.len()),
            spec,
            1 << 20,
            &SharedMemory::disabled(),
        )
        .unwrap_err();
        assert!(
            extra.message.contains("1 bytes after the last input"),
            "{}",
            extra.message
        );
        let short = decode(
            "m",
            "",
            header.clone().into_bytes().into(),
            Some(header.len()),
            spec,
            1 << 20,
            &SharedMemory::disabled(),
        )
        .unwrap_err();
        assert!(
            short
                .message
                .contains("binary_data_size is 8 but only 0 bytes follow"),
            "{}",
            short.message
        );
    }
}
