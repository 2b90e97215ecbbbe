//! What wharf adds to a request against what the engine costs, side by side: protocol
//! decoding plus validation of a PP-OCR classifier request, and the tract run it feeds.
//!
//!     cargo bench --bench request_path

use std::{hint::black_box, path::Path, sync::Arc};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use wharf::{
    backend::{tract::TractModel, Model},
    grpc::{
        convert::decode_request,
        pb::{model_infer_request::InferInputTensor, ModelInferRequest},
    },
    repository::{config::ModelConfig, spec::ModelSpec},
    validate,
};

fn cls_request() -> ModelInferRequest {
    let values: Vec<u8> = (0..3 * 48 * 192)
        .flat_map(|i| ((i % 255) as f32 / 255.0).to_le_bytes())
        .collect();
    ModelInferRequest {
        model_name: "ppocr_cls".into(),
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 3, 48, 192],
            ..Default::default()
        }],
        raw_input_contents: vec![Bytes::from(values)],
        ..Default::default()
    }
}

fn request_path(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ppocr_cls");
    let config = ModelConfig::from_file(&dir.join("config.yaml")).unwrap();
    let model: Arc<dyn Model> = TractModel::load(&dir.join("1/model.onnx")).unwrap();
    let spec = ModelSpec::resolve(&config, model.signature()).unwrap();
    let request = cls_request();
    let shm = wharf::shared_memory::SharedMemory::disabled();

    let mut group = c.benchmark_group("ppocr_cls_batch1");
    group.bench_function("wharf_decode_and_validate", |b| {
        b.iter(|| {
            let (decoded, _) = decode_request(black_box(request.clone()), 64 << 20, &shm).unwrap();
            validate::inputs("ppocr_cls", &spec, decoded.inputs).unwrap()
        })
    });
    let (decoded, _) = decode_request(request.clone(), 64 << 20, &shm).unwrap();
    let (inputs, _) = validate::inputs("ppocr_cls", &spec, decoded.inputs).unwrap();
    let mut instance = Arc::clone(&model).new_instance().unwrap();
    group.bench_function("tract_run", |b| {
        b.iter(|| instance.run(black_box(&inputs)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, request_path);
criterion_main!(benches);
