//! The gRPC service's answers as Triton's HTTP server writes them: the protobuf message
//! in JSON with the proto's field names, every field present (perf_analyzer reads each
//! statistics key), 64-bit integers as numbers and enums by name.

use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::Value;

use crate::grpc::pb;

/// `message` (of protobuf type `inference.<name>`) as JSON.
pub fn to_json<M: Message>(name: &str, message: &M) -> Value {
    let descriptor = pb::message(name);
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .expect("a message this build encoded");
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .use_proto_field_name(true)
        .skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("protobuf messages serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_their_proto_names_numbers_and_enum_names() {
        let config = pb::ModelConfig {
            name: "m".into(),
            max_batch_size: 8,
            input: vec![pb::ModelInput {
                name: "x".into(),
                data_type: pb::DataType::TypeFp32 as i32,
                dims: vec![-1, 16],
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = to_json("ModelConfig", &config);
        assert_eq!(json["max_batch_size"], 8);
        assert_eq!(json["input"][0]["data_type"], "TYPE_FP32");
        assert_eq!(json["input"][0]["dims"], serde_json::json!([-1, 16]));
        // Unset messages and oneofs are left out: perf_analyzer tells schedulers apart by
        // whether the key exists.
        assert!(json.get("dynamic_batching").is_none(), "{json}");
        let stats = pb::ModelStatisticsResponse {
            model_stats: vec![pb::ModelStatistics {
                name: "m".into(),
                version: "1".into(),
                inference_count: 3,
                ..Default::default()
            }],
        };
        let json = to_json("ModelStatisticsResponse", &stats);
        assert_eq!(json["model_stats"][0]["inference_count"], 3);
        assert_eq!(json["model_stats"][0]["execution_count"], 0);
    }
}
