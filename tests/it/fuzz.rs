//! Fuzzing on the stable toolchain: random and structured inputs into request decoding
//! (protobuf bytes → tensors, BYTES framing, raw and typed contents), request validation
//! and model config parsing. None may panic; each either decodes or says why not. CI runs
//! a few seconds of it; `PROPTEST_CASES=200000 cargo test --release --test fuzz` runs
//! longer (benches/README.md has the figure). The coverage-guided targets in fuzz/ run the
//! same bodies (fuzz/targets.rs).

use proptest::prelude::*;
use prost::Message;
use wharf::grpc::pb::{
    model_infer_request::InferInputTensor, InferTensorContents, ModelInferRequest,
};

#[path = "../../fuzz/targets.rs"]
mod targets;

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
            raw_input_contents: raw.into_iter().map(Into::into).collect(),
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
        targets::decode_and_validate(request, targets::add_sub_spec());
    }

    #[test]
    fn structured_requests_survive_the_wire_with_bytes_flipped(
        request in request(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut wire = request.encode_to_vec();
        for (at, byte) in flips {
            if !wire.is_empty() {
                let i = at.index(wire.len());
                wire[i] ^= byte;
            }
        }
        targets::wire_request(&wire, targets::add_sub_spec());
    }

    #[test]
    fn protobuf_bytes_decode_or_say_why(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        targets::wire_request(&bytes, targets::add_sub_spec());
    }

    #[test]
    fn bytes_framing_parses_or_says_why(raw in prop::collection::vec(any::<u8>(), 0..64), count in 0usize..40) {
        targets::bytes_framing(&raw, count);
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
        targets::model_config(&yaml);
    }

    #[test]
    fn arbitrary_config_text_parses_or_says_why(text in "\\PC{0,200}") {
        targets::model_config(&text);
    }
}
