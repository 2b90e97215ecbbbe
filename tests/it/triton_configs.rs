//! Every `config.pbtxt` of Triton's server repository (its docs/examples, qa/ and deploy/
//! trees at e1db8a6, vendored in tests/fixtures/triton with Triton's license) read by
//! wharf's config reader: each is valid text format against Triton's schema, and each
//! that wharf refuses is refused for one of the reasons stated here.

use std::path::{Path, PathBuf};

use wharf::repository::config::{Format, ModelConfig, Platform};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/triton")
}

fn fixtures(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            fixtures(&path, out);
        } else if path.extension().is_some_and(|e| e == "pbtxt") {
            out.push(path);
        }
    }
}

fn read(relative: &str) -> Result<ModelConfig, String> {
    ModelConfig::from_pbtxt(&std::fs::read_to_string(root().join(relative)).unwrap())
}

/// Why wharf refuses a config Triton's schema allows, by the words of its error.
const REFUSALS: [(&str, &str); 15] = [
    (
        "is not one of wharf's engines",
        "a backend wharf does not have (python, identity, pytorch, vllm, Triton's test backends)",
    ),
    (
        "unknown variant `tensorrt_plan`",
        "a TensorRT plan, not an ONNX model",
    ),
    (
        "unknown variant `onnxruntim",
        "not a platform name (Triton's own tests misspell it on purpose)",
    ),
    (
        "unknown variant `KIND_MODEL`",
        "instances placed by the model itself, which an ONNX engine is not",
    ),
    (
        "`sequence_batching` cannot be served",
        "a stateful model needs a sequence batcher",
    ),
    (
        "`model_transaction_policy` cannot be served",
        "a decoupled model answers many times per request",
    ),
    (
        "`batch_input` cannot be served",
        "the model reads batch inputs wharf does not build",
    ),
    (
        "`batch_output` cannot be served",
        "the model writes batch outputs wharf does not scatter",
    ),
    ("is_shape_tensor` cannot be served", "shape tensors"),
    (
        "is_non_linear_format_io` cannot be served",
        "non-linear tensor formats",
    ),
    (
        "tract runs on CPU only",
        "KIND_GPU without backend onnxruntime (tract is wharf's default engine)",
    ),
    (
        "unknown parameter",
        "a TensorRT backend parameter; wharf names the keys it takes",
    ),
    // Configs Triton's own tests expect to fail (each has an `expected` error beside it):
    (
        "expected sizes >= 1 or -1",
        "a zero dimension (Triton: dimension must be integer >= 1, or -1)",
    ),
    ("expected u32", "a negative max_batch_size or GPU id"),
    (
        "a reshape keeps the element count",
        "a reshape of another element count (Triton: different size for dims and reshape)",
    ),
];

/// Ensembles that Triton's tests write wrong on purpose, each with its `expected` error.
const BROKEN_ENSEMBLES: [&str; 7] = [
    "ensemble/ensemble_scheduling_no_set",
    "ensemble/has_backend",
    "ensemble/model_warm_up_set",
    "ensemble/no_model_name",
    "ensemble/no_output_map",
    "ensemble/no_step",
    "ensemble/no_step_2",
];

#[test]
fn every_triton_config_is_read_or_refused_for_a_stated_reason() {
    let mut files = Vec::new();
    fixtures(&root(), &mut files);
    assert_eq!(files.len(), 434, "the vendored set");
    let mut served = 0;
    for path in &files {
        let relative = path.strip_prefix(root()).unwrap().display().to_string();
        let Err(error) = read(&relative) else {
            served += 1;
            continue;
        };
        // Every file is valid text format against Triton's schema: errors past the
        // parse name a key or a field, never a line.
        assert!(!error.starts_with("line "), "{relative}: {error}");
        let stated = REFUSALS.iter().any(|(words, _)| error.contains(words))
            || BROKEN_ENSEMBLES
                .iter()
                .any(|dir| relative.contains(&format!("autofill_noplatform/{dir}/")));
        assert!(
            stated,
            "{relative}: refused for a reason not stated: {error}"
        );
    }
    assert_eq!(served, 191, "configs wharf reads, of 434");
}

#[test]
fn triton_examples_read_as_triton_means_them() {
    let simple = read("docs/examples/model_repository/simple/config.pbtxt").unwrap();
    assert_eq!(simple.max_batch_size, Some(8));
    assert_eq!(simple.platform, Some(Platform::OnnxruntimeOnnx));
    assert_eq!(simple.input.as_ref().unwrap()[1].name, "INPUT1");
    assert_eq!(simple.input.as_ref().unwrap()[1].dims, Some(vec![16]));
    let densenet = read("docs/examples/model_repository/densenet_onnx/config.pbtxt").unwrap();
    // `max_batch_size : 0` with inputs and outputs given: no batching, as in Triton.
    assert_eq!(densenet.max_batch_size, Some(0));
    let input = &densenet.input.as_ref().unwrap()[0];
    assert_eq!(input.format, Format::Nchw);
    assert_eq!(input.reshape.as_ref().unwrap().shape, vec![1, 3, 224, 224]);
    let output = &densenet.output.as_ref().unwrap()[0];
    assert_eq!(
        output.label_filename.as_deref(),
        Some("densenet_labels.txt")
    );
    let ensemble = read("qa/ensemble_models/mix_type_int32_float32_float32/config.pbtxt").unwrap();
    assert!(ensemble.is_ensemble());
    assert!(ensemble.step_models().count() >= 2);
    let warned =
        read("qa/L0_model_config/autofill_noplatform_success/onnx/cpu_instance/config.pbtxt");
    assert!(warned.is_ok(), "{warned:?}");
}
