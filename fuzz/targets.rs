//! The fuzz targets' bodies, shared by the coverage-guided cargo-fuzz binaries in
//! fuzz_targets/ and the stable-toolchain runner in tests/it/fuzz.rs. Each takes anything and
//! must not panic: it either decodes or says why not.

use std::sync::OnceLock;

use bytes::Bytes;
use prost::Message;
use wharf::{
    backend::{Signature, TensorSignature},
    grpc::{convert::decode_request, pb::ModelInferRequest},
    repository::{config::ModelConfig, spec::ModelSpec},
    tensor::{parse_bytes_framing, DataType},
    validate,
};

/// Tensor bytes one fuzzed request may carry.
const LIMIT: usize = 1 << 16;

/// add_sub's spec: two FP32 inputs of [batch, 4], batches of up to 8.
pub fn add_sub_spec() -> &'static ModelSpec {
    static SPEC: OnceLock<ModelSpec> = OnceLock::new();
    SPEC.get_or_init(build_spec)
}

fn build_spec() -> ModelSpec {
    let tensor = |name: &str| TensorSignature {
        name: name.into(),
        datatype: Some(DataType::Fp32),
        dims: Some(vec![-1, 4]),
    };
    let signature = Signature {
        inputs: vec![tensor("INPUT0"), tensor("INPUT1")],
        outputs: vec![tensor("OUTPUT0")],
    };
    let config = ModelConfig::from_yaml("max_batch_size: 8\n").expect("a valid config");
    ModelSpec::resolve(&config, &signature).expect("a valid spec")
}

/// A decoded request through the protocol checks and then the model's.
pub fn decode_and_validate(request: ModelInferRequest, spec: &ModelSpec) {
    // No region is registered: a request naming one is refused, never read.
    let shm = wharf::shared_memory::SharedMemory::disabled();
    if let Ok((decoded, _)) = decode_request(request, LIMIT, &shm) {
        let _ = validate::inputs("add_sub", spec, decoded.inputs);
    }
}

/// Protobuf bytes as they come off the wire.
pub fn wire_request(data: &[u8], spec: &ModelSpec) {
    if let Ok(request) = ModelInferRequest::decode(data) {
        decode_and_validate(request, spec);
    }
}

/// Raw BYTES framing for `count` elements; what parses must account for every byte.
pub fn bytes_framing(data: &[u8], count: usize) {
    let raw = Bytes::copy_from_slice(data);
    if let Ok(items) = parse_bytes_framing(&raw, count) {
        assert_eq!(items.len(), count);
        assert_eq!(items.iter().map(|i| i.len() + 4).sum::<usize>(), raw.len());
    }
}

/// A model's config.yaml.
pub fn model_config(text: &str) {
    let _ = ModelConfig::from_yaml(text);
}
