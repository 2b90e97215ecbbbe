//! An inference answer as HTTP sends it: a JSON header written straight from the output
//! tensors (no JSON tree between), and the outputs that travel as bytes after it.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Serialize, Serializer};

use super::infer::Binary;
use crate::{
    request::InferResponse,
    shared_memory::{OutputWindows, ShmError},
    tensor::{le_chunks, DataType, Tensor, TensorData},
};

/// The answer: its JSON header, and the bytes of the outputs that travel as bytes (None
/// when none does). Serialised straight from the tensors, with no JSON tree between.
/// Outputs with a window are written into shared memory and sent with no data.
pub fn encode(
    response: InferResponse,
    binary: &Binary,
    windows: &OutputWindows,
) -> Result<(Vec<u8>, Option<Bytes>), ShmError> {
    let mut blobs = BytesMut::new();
    let mut outputs: Vec<OutputAnswer> = Vec::with_capacity(response.outputs.len());
    for t in &response.outputs {
        let window = windows.iter().find(|(name, _)| *name == t.name);
        // FP16 and BF16 have no JSON form: they always travel as bytes.
        let as_bytes = matches!(t.datatype, DataType::Fp16 | DataType::Bf16)
            || match binary {
                Binary::Everything => true,
                Binary::Chosen { named, all } => named
                    .iter()
                    .find(|(n, _)| *n == t.name)
                    .map_or(*all, |(_, b)| *b),
            };
        let (parameters, data) = if let Some((_, window)) = window {
            window.write(&t.name, &t.to_raw())?;
            (None, None)
        } else if as_bytes {
            let raw = t.to_raw();
            let size = raw.len();
            blobs.put(raw);
            (
                Some(BinarySize {
                    binary_data_size: size,
                }),
                None,
            )
        } else {
            (None, Some(JsonData(t)))
        };
        outputs.push(OutputAnswer {
            name: &t.name,
            datatype: t.datatype.as_str(),
            shape: &t.shape,
            parameters,
            data,
        });
    }
    let header = AnswerHeader {
        model_name: &response.model_name,
        model_version: &response.model_version,
        id: &response.id,
        outputs,
    };
    let any_binary = header.outputs.iter().any(|o| o.parameters.is_some());
    let header = serde_json::to_vec(&header).expect("answers serialise");
    Ok((header, any_binary.then(|| blobs.freeze())))
}

#[derive(Serialize)]
struct AnswerHeader<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    outputs: Vec<OutputAnswer<'a>>,
}

#[derive(Serialize)]
struct OutputAnswer<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// An output's elements as a flat JSON array, written from its bytes as they are.
struct JsonData<'a>(&'a Tensor);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let fixed: &[u8] = match &t.data {
            TensorData::Fixed(b) => b,
            TensorData::Bytes(items) => {
                return s.collect_seq(items.iter().map(|b| String::from_utf8_lossy(b)))
            }
        };
        match t.datatype {
            DataType::Bool => s.collect_seq(fixed.iter().map(|b| *b != 0)),
            DataType::Int8 => s.collect_seq(le_chunks::<1>(fixed).map(i8::from_le_bytes)),
            DataType::Int16 => s.collect_seq(le_chunks::<2>(fixed).map(i16::from_le_bytes)),
            DataType::Int32 => s.collect_seq(le_chunks::<4>(fixed).map(i32::from_le_bytes)),
            DataType::Int64 => s.collect_seq(le_chunks::<8>(fixed).map(i64::from_le_bytes)),
            DataType::Uint8 => s.collect_seq(fixed.iter()),
            DataType::Uint16 => s.collect_seq(le_chunks::<2>(fixed).map(u16::from_le_bytes)),
            DataType::Uint32 => s.collect_seq(le_chunks::<4>(fixed).map(u32::from_le_bytes)),
            DataType::Uint64 => s.collect_seq(le_chunks::<8>(fixed).map(u64::from_le_bytes)),
            DataType::Fp32 => s.collect_seq(le_chunks::<4>(fixed).map(f32::from_le_bytes)),
            DataType::Fp64 => s.collect_seq(le_chunks::<8>(fixed).map(f64::from_le_bytes)),
            // Never asked for: FP16 and BF16 always travel as bytes (`encode`).
            DataType::Bytes | DataType::Fp16 | DataType::Bf16 => {
                s.collect_seq(std::iter::empty::<u8>())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    #[test]
    fn answers_write_each_datatype_as_json_and_half_floats_as_bytes() {
        let fixed = |name: &str, datatype, bytes: &[u8]| Tensor {
            name: name.into(),
            datatype,
            shape: vec![1, bytes.len() / datatype.element_size().unwrap()],
            data: TensorData::Fixed(Bytes::copy_from_slice(bytes)),
        };
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: String::new(),
            outputs: vec![
                fixed("b", DataType::Bool, &[1, 0]),
                fixed("i8", DataType::Int8, &[0xff, 7]),
                fixed("u16", DataType::Uint16, &[0xff, 0xff]),
                fixed("f32", DataType::Fp32, &0.5f32.to_le_bytes()),
                fixed("f16", DataType::Fp16, &[0, 0x3c]),
                Tensor {
                    name: "s".into(),
                    datatype: DataType::Bytes,
                    shape: vec![2],
                    data: TensorData::Bytes(vec![Bytes::from("汉字"), Bytes::new()]),
                },
            ],
        };
        let chosen = Binary::Chosen {
            named: vec![],
            all: false,
        };
        let (header, blobs) = encode(response, &chosen, &Vec::new()).unwrap();
        let header: Value = serde_json::from_slice(&header).unwrap();
        assert!(header.get("id").is_none(), "an empty id is left out");
        let data = |i: usize| header["outputs"][i]["data"].clone();
        assert_eq!(data(0), json!([true, false]));
        assert_eq!(data(1), json!([-1, 7]));
        assert_eq!(data(2), json!([65535]));
        assert_eq!(data(3), json!([0.5]));
        assert_eq!(data(5), json!(["汉字", ""]));
        assert_eq!(
            header["outputs"][4]["parameters"],
            json!({"binary_data_size": 2})
        );
        assert_eq!(header["outputs"][4]["shape"], json!([1, 1]));
        assert_eq!(blobs.unwrap().as_ref(), &[0, 0x3c]);
    }
}
