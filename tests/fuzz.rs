//! Fuzzing on the stable toolchain: random and structured inputs into request decoding
//! (protobuf bytes → tensors, BYTES framing, raw and typed contents), request validation
//! and model config parsing. None may panic; each either decodes or says why not. CI runs
//! a few seconds of it; `PROPTEST_CASES=200000 cargo test --release --test fuzz` runs
//! longer (benches/README.md has the figure). The coverage-guided targets in fuzz/ call the
//! same functions.

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;
use wharf::{
    backend::{Signature, TensorSignature},
    grpc::{
        convert::decode_request,
        pb::{model_infer_request::InferInputTensor, InferTensorContents, ModelInferRequest},
    },
    repository::{config::ModelConfig, spec::ModelSpec},
    tensor::{parse_bytes_framing, DataType},
    validate,
};

const LIMIT: usize = 1 << 16;

/// add_sub's spec: two FP32 inputs of [batch, 4], batches of up to 8.
fn spec() -> ModelSpec {
    let tensor = |name: &str| TensorSignature {
        name: name.into(),
        datatype: Some(DataType::Fp32),
        dims: Some(vec![-1, 4]),
    };
    let signature = Signature {
        inputs: vec![tensor("INPUT0"), tensor("INPUT1")],
        outputs: vec![tensor("OUTPUT0")],
    };
    ModelSpec::resolve(
        &ModelConfig::from_yaml("max_batch_size: 8\n").unwrap(),
        &signature,
    )
    .unwrap()
}

/// Decodes and validates; the only thing that may not happen is a panic.
fn serve(request: ModelInferRequest, spec: &ModelSpec) {
    if let Ok((decoded, _form)) = decode_request(request, LIMIT) {
        let _ = validate::inputs("add_sub", spec, decoded.inputs);
    }
}

fn datatype() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
            "FP16", "BF16", "FP32", "FP64", "BYTES"
        ])
        .prop_map(String::from),
        "[A-Za-z0-9]{0,6}",
    ]
}

fn dim() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => -2i64..10,
        1 => any::<i64>(),
        1 => Just(1i64 << 40),
    ]
}

fn contents() -> impl Strategy<Value = Option<InferTensorContents>> {
    let n = 0usize..12;
    prop::option::of(prop_oneof![
        prop::collection::vec(any::<f32>(), n.clone()).prop_map(|v| InferTensorContents {
            fp32_contents: v,
            ..Default::default()
        }),
        prop::collection::vec(any::<i32>(), n.clone()).prop_map(|v| InferTensorContents {
            int_contents: v,
            ..Default::default()
        }),
        prop::collection::vec(any::<bool>(), n.clone()).prop_map(|v| InferTensorContents {
            bool_contents: v,
            ..Default::default()
        }),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), n).prop_map(|v| {
            InferTensorContents {
                bytes_contents: v,
                ..Default::default()
            }
        }),
    ])
}

fn request() -> impl Strategy<Value = ModelInferRequest> {
    let input = (
        prop::sample::select(vec!["INPUT0", "INPUT1", "OTHER", ""]),
        datatype(),
        prop::collection::vec(dim(), 0..5),
        contents(),
    )
        .prop_map(|(name, datatype, shape, contents)| InferInputTensor {
            name: name.into(),
            datatype,
            shape,
            contents,
            ..Default::default()
        });
    (
        prop::collection::vec(input, 0..4),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..4),
    )
        .prop_map(|(inputs, raw)| ModelInferRequest {
            model_name: "add_sub".into(),
            inputs,
            raw_input_contents: raw.into_iter().map(Bytes::from).collect(),
            ..Default::default()
        })
}

proptest! {
    // PROPTEST_CASES overrides the count for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(20_000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn structured_requests_decode_or_say_why(request in request()) {
        serve(request, &spec());
    }

    #[test]
    fn protobuf_bytes_decode_or_say_why(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = ModelInferRequest::decode(bytes.as_slice()) {
            serve(request, &spec());
        }
    }

    #[test]
    fn bytes_framing_parses_or_says_why(raw in prop::collection::vec(any::<u8>(), 0..64), count in 0usize..40) {
        let raw = Bytes::from(raw);
        if let Ok(items) = parse_bytes_framing(&raw, count) {
            prop_assert_eq!(items.len(), count);
            let framed: usize = items.iter().map(|i| i.len() + 4).sum();
            prop_assert_eq!(framed, raw.len());
        }
    }

    #[test]
    fn model_configs_parse_or_say_why(
        lines in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "max_batch_size", "backend", "input", "output", "dynamic_batching",
                    "instance_group", "model_warmup", "parameters", "version_policy", "name",
                    "preferred_batch_size", "dims", "data_type", "count", "kind", "memory_budget",
                ]),
                prop::sample::select(vec![
                    "8", "-1", "0", "tract", "onnxruntime", "[]", "{}", "[{ name: x, data_type: TYPE_FP32, dims: [-1, 3] }]",
                    "{ preferred_batch_size: [4, 8], max_queue_delay_microseconds: 99999999999 }",
                    "[{ count: 0, kind: KIND_GPU, memory_budget: 1KiB }]", "true", "\"x\"", "18446744073709551616",
                    "{ latest: { num_versions: 0 } }", "[{ name: w, inputs: { x: { data_type: FP32, dims: [-5] } } }]",
                ]),
            ),
            0..6,
        )
    ) {
        let yaml: String = lines.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
        let _ = ModelConfig::from_yaml(&yaml);
    }

    #[test]
    fn arbitrary_config_text_parses_or_says_why(text in "\\PC{0,200}") {
        let _ = ModelConfig::from_yaml(&text);
    }
}
