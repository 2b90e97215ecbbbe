//! wharf's tensors to ONNX Runtime values and back.

use bytes::Bytes;
use ort::value::{DynTensor, DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

use crate::{
    backend::BackendError,
    tensor::{le_chunks as le, DataType, Tensor, TensorData},
};

pub(super) fn element_type(datatype: DataType) -> TensorElementType {
    match datatype {
        DataType::Bool => TensorElementType::Bool,
        DataType::Uint8 => TensorElementType::Uint8,
        DataType::Uint16 => TensorElementType::Uint16,
        DataType::Uint32 => TensorElementType::Uint32,
        DataType::Uint64 => TensorElementType::Uint64,
        DataType::Int8 => TensorElementType::Int8,
        DataType::Int16 => TensorElementType::Int16,
        DataType::Int32 => TensorElementType::Int32,
        DataType::Int64 => TensorElementType::Int64,
        DataType::Fp16 => TensorElementType::Float16,
        DataType::Bf16 => TensorElementType::Bfloat16,
        DataType::Fp32 => TensorElementType::Float32,
        DataType::Fp64 => TensorElementType::Float64,
        DataType::Bytes => TensorElementType::String,
    }
}

pub(super) fn to_ort(t: &Tensor) -> Result<DynTensor, BackendError> {
    let shape: Vec<i64> = t.shape.iter().map(|d| *d as i64).collect();
    let fail = |e: ort::Error| BackendError::Execution(format!("input '{}': {e}", t.name));
    let bytes: &[u8] = match &t.data {
        TensorData::Fixed(b) => b,
        TensorData::Bytes(items) => {
            let strings = crate::backend::utf8_strings(t, items, "onnxruntime")?;
            // ONNX Runtime copies strings as C strings, which end at the first NUL.
            if let Some(at) = strings.iter().position(|s| s.contains('\0')) {
                return Err(BackendError::Unsupported(format!(
                    "input '{}' element {at}: holds a NUL byte, which the onnxruntime backend's strings cannot carry (tract's can)",
                    t.name
                )));
            }
            return OrtTensor::from_string_array((shape, strings.as_slice()))
                .map(|v| v.upcast())
                .map_err(fail);
        }
    };
    macro_rules! typed {
        ($ty:ty, $n:literal, $conv:expr) => {
            OrtTensor::<$ty>::from_array((shape, le::<$n>(bytes).map($conv).collect::<Vec<$ty>>()))
                .map(|v| v.upcast())
                .map_err(fail)
        };
    }
    match t.datatype {
        DataType::Bool => typed!(bool, 1, |b: [u8; 1]| b[0] != 0),
        DataType::Uint8 => typed!(u8, 1, |b: [u8; 1]| b[0]),
        DataType::Uint16 => typed!(u16, 2, u16::from_le_bytes),
        DataType::Uint32 => typed!(u32, 4, u32::from_le_bytes),
        DataType::Uint64 => typed!(u64, 8, u64::from_le_bytes),
        DataType::Int8 => typed!(i8, 1, i8::from_le_bytes),
        DataType::Int16 => typed!(i16, 2, i16::from_le_bytes),
        DataType::Int32 => typed!(i32, 4, i32::from_le_bytes),
        DataType::Int64 => typed!(i64, 8, i64::from_le_bytes),
        DataType::Fp16 => typed!(half::f16, 2, |b: [u8; 2]| half::f16::from_le_bytes(b)),
        DataType::Bf16 => typed!(half::bf16, 2, |b: [u8; 2]| half::bf16::from_le_bytes(b)),
        DataType::Fp32 => typed!(f32, 4, f32::from_le_bytes),
        DataType::Fp64 => typed!(f64, 8, f64::from_le_bytes),
        DataType::Bytes => unreachable!("BYTES data is TensorData::Bytes"),
    }
}

pub(super) fn from_ort(name: &str, value: &DynValue) -> Result<Tensor, BackendError> {
    let fail = |e: ort::Error| BackendError::Execution(format!("output '{name}': {e}"));
    let ty = match value.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => {
            return Err(BackendError::Unsupported(format!(
                "output '{name}' is {other:?}, not a tensor"
            )))
        }
    };
    macro_rules! fixed {
        ($ty:ty, $dt:expr, $to:expr) => {{
            let (shape, data) = value.try_extract_tensor::<$ty>().map_err(fail)?;
            // One sized buffer, appended to in place (a flat_map collect grows it by
            // doubling and pushes byte by byte): rec's answers are 1 MiB a row.
            let mut bytes = Vec::with_capacity(std::mem::size_of_val(data));
            for v in data {
                bytes.extend_from_slice(&$to(*v));
            }
            (
                shape.iter().map(|d| *d as usize).collect::<Vec<_>>(),
                $dt,
                TensorData::Fixed(Bytes::from(bytes)),
            )
        }};
    }
    let (shape, datatype, data) = match ty {
        TensorElementType::Bool => fixed!(bool, DataType::Bool, |v: bool| [v as u8]),
        TensorElementType::Uint8 => fixed!(u8, DataType::Uint8, |v: u8| [v]),
        TensorElementType::Uint16 => fixed!(u16, DataType::Uint16, u16::to_le_bytes),
        TensorElementType::Uint32 => fixed!(u32, DataType::Uint32, u32::to_le_bytes),
        TensorElementType::Uint64 => fixed!(u64, DataType::Uint64, u64::to_le_bytes),
        TensorElementType::Int8 => fixed!(i8, DataType::Int8, i8::to_le_bytes),
        TensorElementType::Int16 => fixed!(i16, DataType::Int16, i16::to_le_bytes),
        TensorElementType::Int32 => fixed!(i32, DataType::Int32, i32::to_le_bytes),
        TensorElementType::Int64 => fixed!(i64, DataType::Int64, i64::to_le_bytes),
        TensorElementType::Float16 => fixed!(half::f16, DataType::Fp16, half::f16::to_le_bytes),
        TensorElementType::Bfloat16 => fixed!(half::bf16, DataType::Bf16, half::bf16::to_le_bytes),
        TensorElementType::Float32 => fixed!(f32, DataType::Fp32, f32::to_le_bytes),
        TensorElementType::Float64 => fixed!(f64, DataType::Fp64, f64::to_le_bytes),
        TensorElementType::String => {
            let (shape, strings) = value.try_extract_strings().map_err(fail)?;
            (
                shape.iter().map(|d| *d as usize).collect(),
                DataType::Bytes,
                TensorData::Bytes(strings.into_iter().map(Bytes::from).collect()),
            )
        }
        other => {
            return Err(BackendError::Unsupported(format!(
                "output '{name}' has type {other:?}, which has no KServe datatype"
            )))
        }
    };
    Ok(Tensor {
        name: name.to_owned(),
        datatype,
        shape,
        data,
    })
}
