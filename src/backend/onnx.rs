//! What an ONNX file declares about its inputs and outputs, read from the protobuf alone,
//! so that every engine reports the same signature for the same file.

use tract_onnx::pb;

use super::{Signature, TensorSignature};
use crate::tensor::DataType;

/// The graph's inputs (initializers excluded: older exporters list weights as inputs) and
/// outputs, with the types and dims the file declares.
pub fn signature(proto: &pb::ModelProto) -> Signature {
    let Some(graph) = proto.graph.as_ref() else {
        return Signature {
            inputs: Vec::new(),
            outputs: Vec::new(),
        };
    };
    let is_weight = |name: &str| graph.initializer.iter().any(|i| i.name == name);
    Signature {
        inputs: graph
            .input
            .iter()
            .filter(|i| !is_weight(&i.name))
            .map(describe)
            .collect(),
        outputs: graph.output.iter().map(describe).collect(),
    }
}

fn describe(info: &pb::ValueInfoProto) -> TensorSignature {
    let tensor = info
        .r#type
        .as_ref()
        .and_then(|t| t.value.as_ref())
        .map(|pb::type_proto::Value::TensorType(t)| t);
    TensorSignature {
        name: info.name.clone(),
        datatype: tensor.and_then(|t| datatype(t.elem_type)),
        dims: tensor.and_then(|t| t.shape.as_ref()).map(|shape| {
            shape
                .dim
                .iter()
                .map(|d| match d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => v,
                    _ => -1,
                })
                .collect()
        }),
    }
}

/// ONNX TensorProto.DataType numbers.
pub fn datatype(elem_type: i32) -> Option<DataType> {
    Some(match elem_type {
        1 => DataType::Fp32,
        2 => DataType::Uint8,
        3 => DataType::Int8,
        4 => DataType::Uint16,
        5 => DataType::Int16,
        6 => DataType::Int32,
        7 => DataType::Int64,
        8 => DataType::Bytes,
        9 => DataType::Bool,
        10 => DataType::Fp16,
        11 => DataType::Fp64,
        12 => DataType::Uint32,
        13 => DataType::Uint64,
        16 => DataType::Bf16,
        _ => return None,
    })
}
