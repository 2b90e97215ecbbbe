//! Protocol messages to domain tensors and back: typed `contents` and `raw_*_contents`,
//! BYTES framing, and the request size limit. No model knowledge here.

use std::fmt::Display;

use bytes::Bytes;

use super::pb::{
    infer_parameter::ParameterChoice, model_infer_request::InferInputTensor,
    model_infer_response::InferOutputTensor, InferParameter, InferTensorContents,
    ModelInferRequest, ModelInferResponse,
};
use crate::{
    error::InferError,
    metrics::Protocol,
    request::{InferRequest, InferResponse},
    shared_memory::{OutputWindows, SharedMemory, ShmParams},
    tensor::{parse_bytes_framing, shape_string, DataType, Tensor, TensorData},
};

/// Decodes a request, refusing anything malformed or larger than `limit` bytes of tensor
/// data in all; inputs that name a region of `shm` are read from it, and the outputs that
/// name one are returned with their windows. Its answer is raw whatever form the request
/// took, as Triton's is.
pub fn decode_request(
    request: ModelInferRequest,
    limit: usize,
    shm: &SharedMemory,
) -> Result<(InferRequest, OutputWindows), InferError> {
    let raw = !request.raw_input_contents.is_empty();
    let in_shm: Vec<Option<ShmParams>> = request
        .inputs
        .iter()
        .map(|i| shm_params(&i.name, &i.parameters))
        .collect::<Result<_, _>>()?;
    let sent = in_shm.iter().filter(|p| p.is_none()).count();
    if raw {
        if let Some(mixed) = request.inputs.iter().find(|i| i.contents.is_some()) {
            // Triton's words in parentheses: its clients match them.
            return Err(InferError::invalid(format!(
                "input '{0}' has typed contents but the request also carries raw_input_contents; send all inputs one way \
                 (contents field must not be specified when using raw_input_contents for '{0}' for model '{1}')",
                mixed.name, request.model_name
            )));
        }
        if request.raw_input_contents.len() != sent {
            return Err(InferError::invalid(format!(
                "raw_input_contents has {} entries but the request has {sent} inputs not in shared memory; expected one per input",
                request.raw_input_contents.len(),
            )));
        }
    }
    let mut total = 0usize;
    let mut raw_contents = request.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for (input, in_shm) in request.inputs.into_iter().zip(in_shm) {
        let data = match in_shm {
            Some(params) => {
                if input.contents.is_some() {
                    return Err(InferError::invalid(format!(
                        "input '{}' names a shared memory region and also carries contents; send it one way",
                        input.name
                    )));
                }
                Some(params.read(shm, &input.name, limit)?)
            }
            None => raw.then(|| raw_contents.next()).flatten(),
        };
        let tensor = decode_input(input, data, limit)?;
        total += tensor.byte_size();
        if total > limit {
            return Err(InferError::invalid(format!(
                "request tensors reach {total} bytes at input '{}', over the limit of {limit} bytes per request",
                tensor.name
            )));
        }
        inputs.push(tensor);
    }
    let mut outputs = Vec::with_capacity(request.outputs.len());
    let mut classification = Vec::new();
    let mut windows = Vec::new();
    for output in request.outputs {
        let count = class_count(&output.name, &output.parameters)?;
        let params = shm_params(&output.name, &output.parameters)?;
        match (count, params) {
            (Some(_), Some(_)) => {
                return Err(InferError::invalid(format!(
                    "output '{}' can't set both 'shared_memory_region' and 'classification'",
                    output.name
                )))
            }
            (Some(count), None) => classification.push((output.name.clone(), count)),
            (None, Some(params)) => windows.push((output.name.clone(), params.window(shm)?)),
            (None, None) => {}
        }
        outputs.push(output.name);
    }
    let decoded = InferRequest {
        model_name: request.model_name,
        model_version: request.model_version,
        id: request.id,
        inputs,
        outputs,
        classification,
        priority: uint_param(&request.parameters, "priority")?,
        timeout: uint_param(&request.parameters, "timeout")?.map(std::time::Duration::from_micros),
        deadline: None,
        protocol: Protocol::Grpc,
        trace: None,
    };
    Ok((decoded, windows))
}

/// A tensor's `shared_memory_*` parameters, where it names a region.
fn shm_params(
    tensor: &str,
    params: &std::collections::HashMap<String, InferParameter>,
) -> Result<Option<ShmParams>, InferError> {
    let Some(region) = params.get("shared_memory_region") else {
        return Ok(None);
    };
    let Some(ParameterChoice::StringParam(region)) = &region.parameter_choice else {
        return Err(InferError::invalid(format!(
            "'{tensor}': shared_memory_region must be a string_param"
        )));
    };
    let number = |key: &str| -> Result<Option<u64>, InferError> {
        match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
            None => Ok(None),
            Some(ParameterChoice::Int64Param(v)) if *v >= 0 => Ok(Some(*v as u64)),
            Some(ParameterChoice::Uint64Param(v)) => Ok(Some(*v)),
            Some(other) => Err(InferError::invalid(format!(
                "'{tensor}': {key} must be a non-negative integer, found {other:?}"
            ))),
        }
    };
    ShmParams::new(
        tensor,
        region.clone(),
        number("shared_memory_byte_size")?,
        number("shared_memory_offset")?,
    )
    .map(Some)
    .map_err(Into::into)
}

/// A reserved integer parameter (`priority`, `timeout` in microseconds); tritonclient
/// sends the first as uint64_param and the second as int64_param.
fn uint_param(
    params: &std::collections::HashMap<String, InferParameter>,
    key: &str,
) -> Result<Option<u64>, InferError> {
    match params.get(key).and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::Uint64Param(v)) => Ok(Some(*v)),
        Some(ParameterChoice::Int64Param(v)) if *v >= 0 => Ok(Some(*v as u64)),
        Some(other) => Err(InferError::invalid(format!(
            "parameter '{key}' must be a non-negative integer, found {other:?}"
        ))),
    }
}

/// An output's `classification` parameter: how many top classes to answer it with.
fn class_count(
    output: &str,
    params: &std::collections::HashMap<String, InferParameter>,
) -> Result<Option<u32>, InferError> {
    let count = match params.get("classification").and_then(|p| p.parameter_choice.as_ref()) {
        None => return Ok(None),
        Some(ParameterChoice::Int64Param(v)) => i128::from(*v),
        Some(ParameterChoice::Uint64Param(v)) => i128::from(*v),
        Some(other) => {
            return Err(InferError::invalid(format!(
                "output '{output}': parameter 'classification' must be an int64_param class count, found {other:?}"
            )))
        }
    };
    crate::request::class_count(output, count).map(Some)
}

/// One input: its datatype and shape checked, its data from `raw` (little-endian bytes,
/// BYTES elements length-prefixed) or else from its typed `contents`.
pub fn decode_input(
    input: InferInputTensor,
    raw: Option<Bytes>,
    limit: usize,
) -> Result<Tensor, InferError> {
    let name = input.name;
    let bad = |msg: String| InferError::invalid(format!("input '{name}': {msg}"));
    let datatype = DataType::parse(&input.datatype)
        .filter(|_| !input.datatype.starts_with("TYPE_"))
        .ok_or_else(|| {
            let all: Vec<&str> = DataType::ALL.iter().map(|d| d.as_str()).collect();
            bad(format!(
                "unknown datatype '{}'; expected one of {}",
                input.datatype,
                all.join(", ")
            ))
        })?;
    let shape = input
        .shape
        .iter()
        .map(|d| usize::try_from(*d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| {
            bad(format!(
                "shape {} has a negative dimension",
                shape_string(&input.shape)
            ))
        })?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .filter(|n| {
            datatype
                .element_size()
                .is_none_or(|s| n.checked_mul(s).is_some_and(|b| b <= limit))
        })
        .ok_or_else(|| {
            bad(format!(
                "shape {} of {datatype} is larger than the limit of {limit} bytes per request",
                shape_string(&shape)
            ))
        })?;
    let data = match raw {
        Some(bytes) => decode_raw(datatype, &shape, count, bytes).map_err(bad)?,
        None => {
            let contents = input.contents.unwrap_or_default();
            decode_typed(datatype, &shape, count, contents).map_err(bad)?
        }
    };
    Ok(Tensor {
        name,
        datatype,
        shape,
        data,
    })
}

fn decode_raw(
    datatype: DataType,
    shape: &[usize],
    count: usize,
    bytes: Bytes,
) -> Result<TensorData, String> {
    match datatype.element_size() {
        None => parse_bytes_framing(&bytes, count).map(TensorData::Bytes),
        Some(size) => {
            if bytes.len() != count * size {
                return Err(format!(
                    "raw_input_contents holds {} bytes but shape {} of {datatype} needs {}",
                    bytes.len(),
                    shape_string(shape),
                    count * size
                ));
            }
            if datatype == DataType::Bool {
                if let Some(at) = bytes.iter().position(|b| *b > 1) {
                    return Err(format!(
                        "BOOL element {at} is byte {}, expected 0 or 1",
                        bytes[at]
                    ));
                }
            }
            Ok(TensorData::Fixed(bytes))
        }
    }
}

/// The typed field each datatype travels in.
fn typed_field(datatype: DataType) -> Option<&'static str> {
    Some(match datatype {
        DataType::Bool => "bool_contents",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int_contents",
        DataType::Int64 => "int64_contents",
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => "uint_contents",
        DataType::Uint64 => "uint64_contents",
        DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
        DataType::Fp16 | DataType::Bf16 => return None,
    })
}

fn field_lengths(c: &InferTensorContents) -> [(&'static str, usize); 8] {
    [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ]
}

fn decode_typed(
    datatype: DataType,
    shape: &[usize],
    count: usize,
    c: InferTensorContents,
) -> Result<TensorData, String> {
    let Some(field) = typed_field(datatype) else {
        return Err(format!(
            "{datatype} has no typed contents field; send it in raw_input_contents"
        ));
    };
    let lengths = field_lengths(&c);
    if let Some((other, _)) = lengths.iter().find(|(f, n)| *f != field && *n > 0) {
        return Err(format!(
            "{datatype} values belong in {field}, but {other} is set"
        ));
    }
    let given = lengths
        .iter()
        .find(|(f, _)| *f == field)
        .map_or(0, |(_, n)| *n);
    if given != count {
        if given == 0 && count > 0 {
            return Err("has no data: set its contents or raw_input_contents".into());
        }
        return Err(format!(
            "{field} holds {given} values but shape {} needs {count}",
            shape_string(shape)
        ));
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Fixed(
            c.bool_contents
                .into_iter()
                .map(u8::from)
                .collect::<Vec<_>>()
                .into(),
        ),
        DataType::Int8 => narrow(datatype, &c.int_contents, i8::to_le_bytes)?,
        DataType::Int16 => narrow(datatype, &c.int_contents, i16::to_le_bytes)?,
        DataType::Int32 => narrow(datatype, &c.int_contents, i32::to_le_bytes)?,
        DataType::Int64 => narrow(datatype, &c.int64_contents, i64::to_le_bytes)?,
        DataType::Uint8 => narrow(datatype, &c.uint_contents, u8::to_le_bytes)?,
        DataType::Uint16 => narrow(datatype, &c.uint_contents, u16::to_le_bytes)?,
        DataType::Uint32 => narrow(datatype, &c.uint_contents, u32::to_le_bytes)?,
        DataType::Uint64 => narrow(datatype, &c.uint64_contents, u64::to_le_bytes)?,
        DataType::Fp32 => narrow(datatype, &c.fp32_contents, f32::to_le_bytes)?,
        DataType::Fp64 => narrow(datatype, &c.fp64_contents, f64::to_le_bytes)?,
        DataType::Bytes => {
            TensorData::Bytes(c.bytes_contents.into_iter().map(Bytes::from).collect())
        }
        DataType::Fp16 | DataType::Bf16 => unreachable!("no typed field"),
    })
}

/// Converts wire values to the element type, refusing values out of its range.
fn narrow<S, T, const N: usize>(
    datatype: DataType,
    values: &[S],
    to_le: fn(T) -> [u8; N],
) -> Result<TensorData, String>
where
    S: Copy + Display,
    T: TryFrom<S>,
{
    let mut out = Vec::with_capacity(values.len() * N);
    for (i, v) in values.iter().enumerate() {
        let t = T::try_from(*v)
            .map_err(|_| format!("element {i} is {v}, out of range for {datatype}"))?;
        out.extend_from_slice(&to_le(t));
    }
    Ok(TensorData::Fixed(out.into()))
}

/// The answer with every output in `raw_output_contents`, as Triton always answers over
/// gRPC (clients such as Triton's `grpc_explicit_*_content_client` read only that). An
/// output with a window is written into it instead, its raw entry left empty.
pub fn encode_response(
    response: InferResponse,
    windows: &OutputWindows,
) -> Result<ModelInferResponse, InferError> {
    let mut raw_output_contents = Vec::with_capacity(response.outputs.len());
    let mut outputs = Vec::with_capacity(response.outputs.len());
    for t in response.outputs {
        let raw = t.to_raw();
        match windows.iter().find(|(name, _)| *name == t.name) {
            Some((_, window)) => {
                window.write(&t.name, &raw)?;
                raw_output_contents.push(Bytes::new());
            }
            None => raw_output_contents.push(raw),
        }
        outputs.push(InferOutputTensor {
            name: t.name,
            datatype: t.datatype.as_str().to_owned(),
            shape: t.shape.iter().map(|d| *d as i64).collect(),
            parameters: Default::default(),
            contents: None,
        });
    }
    Ok(ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id,
        parameters: Default::default(),
        outputs,
        raw_output_contents,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_shm() -> SharedMemory {
        SharedMemory::disabled()
    }

    fn input(
        name: &str,
        dt: &str,
        shape: &[i64],
        contents: Option<InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: dt.into(),
            shape: shape.to_vec(),
            parameters: Default::default(),
            contents,
        }
    }

    fn request(inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> ModelInferRequest {
        ModelInferRequest {
            model_name: "m".into(),
            inputs,
            raw_input_contents: raw.into_iter().map(Bytes::from).collect(),
            ..Default::default()
        }
    }

    fn err(r: ModelInferRequest) -> String {
        decode_request(r, 1024, &no_shm())
            .map(|(r, _)| r)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn typed_values_round_trip_for_every_typed_datatype() {
        let c = |f: fn(&mut InferTensorContents)| {
            let mut c = InferTensorContents::default();
            f(&mut c);
            c
        };
        let cases: Vec<(&str, InferTensorContents)> = vec![
            ("BOOL", c(|c| c.bool_contents = vec![true, false])),
            ("INT8", c(|c| c.int_contents = vec![-128, 127])),
            ("INT16", c(|c| c.int_contents = vec![-300, 300])),
            ("INT32", c(|c| c.int_contents = vec![i32::MIN, i32::MAX])),
            ("INT64", c(|c| c.int64_contents = vec![i64::MIN, 1])),
            ("UINT8", c(|c| c.uint_contents = vec![0, 255])),
            ("UINT16", c(|c| c.uint_contents = vec![0, 65535])),
            ("UINT32", c(|c| c.uint_contents = vec![0, u32::MAX])),
            ("UINT64", c(|c| c.uint64_contents = vec![0, u64::MAX])),
            ("FP32", c(|c| c.fp32_contents = vec![1.5, -0.25])),
            ("FP64", c(|c| c.fp64_contents = vec![1e300, -2.0])),
            (
                "BYTES",
                c(|c| c.bytes_contents = vec![b"a".to_vec(), vec![0, 255]]),
            ),
        ];
        for (dt, contents) in cases {
            let req = decode_request(
                request(vec![input("x", dt, &[2], Some(contents.clone()))], vec![]),
                1024,
                &no_shm(),
            )
            .unwrap()
            .0;
            let raw = req.inputs[0].to_raw();
            let resp = InferResponse {
                model_name: "m".into(),
                model_version: "1".into(),
                id: String::new(),
                outputs: req.inputs,
            };
            // Answered raw, as Triton answers: the same bytes a raw request carries.
            let encoded = encode_response(resp, &Vec::new()).unwrap();
            assert_eq!(encoded.raw_output_contents, vec![raw.clone()], "{dt}");
            assert!(encoded.outputs[0].contents.is_none(), "{dt}");
            let again = decode_request(
                request(vec![input("x", dt, &[2], None)], vec![raw.to_vec()]),
                1024,
                &no_shm(),
            )
            .unwrap()
            .0;
            assert_eq!(again.inputs[0].to_raw(), raw, "{dt}");
        }
    }

    #[test]
    fn malformed_requests_are_named() {
        let fp32 = |n: usize| InferTensorContents {
            fp32_contents: vec![0.0; n],
            ..Default::default()
        };
        assert!(err(request(
            vec![input("x", "FLOAT", &[1], Some(fp32(1)))],
            vec![]
        ))
        .contains("input 'x': unknown datatype 'FLOAT'"));
        assert!(err(request(vec![input("x", "FP32", &[-1], None)], vec![]))
            .contains("negative dimension"));
        assert!(err(request(
            vec![input("x", "FP32", &[3], Some(fp32(2)))],
            vec![]
        ))
        .contains("fp32_contents holds 2 values but shape [3] needs 3"));
        assert!(err(request(vec![input("x", "FP32", &[1], None)], vec![])).contains("has no data"));
        let ints = InferTensorContents {
            int64_contents: vec![1],
            ..Default::default()
        };
        assert!(
            err(request(vec![input("x", "FP32", &[1], Some(ints))], vec![]))
                .contains("FP32 values belong in fp32_contents, but int64_contents is set")
        );
        let big = InferTensorContents {
            int_contents: vec![300],
            ..Default::default()
        };
        assert!(
            err(request(vec![input("x", "INT8", &[1], Some(big))], vec![]))
                .contains("300, out of range for INT8")
        );
        assert!(err(request(
            vec![input("x", "FP16", &[1], Some(fp32(1)))],
            vec![]
        ))
        .contains("FP16 has no typed contents field"));
        assert!(err(request(
            vec![input("x", "FP32", &[2], None)],
            vec![vec![0; 7]]
        ))
        .contains("raw_input_contents holds 7 bytes but shape [2] of FP32 needs 8"));
        assert!(err(request(
            vec![
                input("x", "FP32", &[2], None),
                input("y", "FP32", &[2], None)
            ],
            vec![vec![0; 8]]
        ))
        .contains("raw_input_contents has 1 entries but the request has 2 inputs"));
        assert!(err(request(
            vec![
                input("x", "FP32", &[1], Some(fp32(1))),
                input("y", "FP32", &[1], None)
            ],
            vec![vec![0; 4], vec![0; 4]]
        ))
        .contains("input 'x' has typed contents but the request also carries raw_input_contents"));
        assert!(
            err(request(vec![input("x", "BOOL", &[1], None)], vec![vec![2]]))
                .contains("expected 0 or 1")
        );
        assert!(err(request(
            vec![input("x", "BYTES", &[1], None)],
            vec![vec![9, 0, 0, 0, 1]]
        ))
        .contains("declares 9 bytes"));
        assert!(err(request(
            vec![input("x", "FP32", &[1 << 40, 1 << 40], None)],
            vec![vec![]]
        ))
        .contains("larger than the limit of 1024 bytes"));
        assert!(err(request(
            vec![
                input("x", "UINT8", &[600], None),
                input("y", "UINT8", &[600], None)
            ],
            vec![vec![0; 600], vec![0; 600]]
        ))
        .contains("reach 1200 bytes at input 'y', over the limit of 1024"));
    }

    #[test]
    fn raw_requests_get_raw_outputs_and_bytes_keep_their_framing() {
        let raw = vec![2, 0, 0, 0, b'h', b'i', 0, 0, 0, 0];
        let req = decode_request(
            request(vec![input("s", "BYTES", &[2], None)], vec![raw.clone()]),
            1024,
            &no_shm(),
        )
        .unwrap()
        .0;
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: "7".into(),
            outputs: req.inputs,
        };
        let encoded = encode_response(resp, &Vec::new()).unwrap();
        assert_eq!(encoded.raw_output_contents, vec![Bytes::from(raw)]);
        assert_eq!(encoded.id, "7");
    }
}
