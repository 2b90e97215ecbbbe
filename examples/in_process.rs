//! The engine without the server: `threads` threads, each with its own tract instance of
//! one shared model, running calls of `batch` rows back to back. The baseline wharf's
//! served throughput is compared against.
//!
//!     cargo run --release --example in_process -- MODEL.onnx 1,3,48,320 THREADS SECONDS

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use wharf::{
    backend::{tract::TractModel, Model},
    tensor::{DataType, Tensor, TensorData},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, shape, threads, seconds] = args.as_slice() else {
        eprintln!("usage: in_process MODEL.onnx d1,d2,.. THREADS SECONDS");
        std::process::exit(2);
    };
    let shape: Vec<usize> = shape.split(',').map(|d| d.parse().expect("dims")).collect();
    let threads: usize = threads.parse().expect("threads");
    let duration = Duration::from_secs_f64(seconds.parse().expect("seconds"));
    let model: Arc<dyn Model> = TractModel::load(path.as_ref()).expect("model loads");
    let name = model.signature().inputs[0].name.clone();
    let count: usize = shape.iter().product();
    let data: Vec<u8> = (0..count)
        .flat_map(|i| ((i % 251) as f32 / 251.0).to_le_bytes())
        .collect();
    let input = Tensor {
        name,
        datatype: DataType::Fp32,
        shape: shape.clone(),
        data: TensorData::Fixed(Bytes::from(data)),
    };
    // Build the plan once before timing, as wharf's warmup does.
    Arc::clone(&model)
        .new_instance()
        .expect("instance")
        .run(std::slice::from_ref(&input))
        .expect("runs");
    let calls = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (model, input, calls) = (Arc::clone(&model), input.clone(), Arc::clone(&calls));
            scope.spawn(move || {
                let mut instance = model.new_instance().expect("instance");
                while started.elapsed() < duration {
                    instance.run(std::slice::from_ref(&input)).expect("runs");
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let calls = calls.load(Ordering::Relaxed);
    println!(
        "{{\"calls\": {calls}, \"rows_per_call\": {}, \"seconds\": {secs:.3}, \"calls_per_s\": {:.2}, \"rows_per_s\": {:.2}}}",
        shape[0],
        calls as f64 / secs,
        (calls as usize * shape[0]) as f64 / secs
    );
}
