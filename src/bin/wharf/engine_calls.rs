//! `wharf engine-calls`: times single ONNX Runtime calls in-process (no server, no
//! batching), batch sizes in a chosen order, to tell apart what a call costs from what a
//! change of shape between consecutive calls of one session costs.

use std::{path::PathBuf, sync::Arc, time::Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;

use wharf::{
    backend::{
        onnxruntime::{GpuOptions, OrtModel, OrtOptions},
        CallPlan, Model,
    },
    tensor::{Tensor, TensorData},
};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Each batch size `--calls` times in a row, then the next (AABB…).
    Blocks,
    /// The batch sizes in turn, `--calls` rounds (ABAB…).
    Alternate,
}

#[derive(Args)]
pub struct EngineCallsArgs {
    /// The ONNX model file
    #[arg(long)]
    pub model: PathBuf,
    /// The ONNX Runtime library
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub onnxruntime_lib: Option<PathBuf>,
    /// The input, without its batch dimension: NAME:D1,D2,... (FP32, zeros)
    #[arg(long)]
    pub input: String,
    /// Batch sizes, comma-separated
    #[arg(long, default_value = "1,8")]
    pub rows: String,
    #[arg(long, value_enum, default_value = "alternate")]
    pub order: Order,
    /// Calls per batch size
    #[arg(long, default_value_t = 30)]
    pub calls: usize,
    /// Run on this CUDA device (CPU provider when absent)
    #[arg(long)]
    pub gpu: Option<i32>,
    /// cuDNN's exhaustive convolution search instead of its heuristic
    #[arg(long)]
    pub exhaustive: bool,
    /// One session per batch size (as wharf's GPU buckets), instead of one for all
    #[arg(long)]
    pub session_per_size: bool,
    #[arg(long)]
    pub io_binding: bool,
    #[arg(long)]
    pub cuda_graph: bool,
    /// The instance's GPU arena cap, bytes
    #[arg(long, default_value_t = 1 << 30)]
    pub memory_limit: usize,
}

#[derive(Serialize)]
struct Call {
    rows: usize,
    shape_changed: bool,
    ms: f64,
}

#[derive(Serialize)]
struct PerSize {
    rows: usize,
    calls: usize,
    median_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Calls over 3x this size's median.
    slow: usize,
    /// The median of the calls whose shape differed from the session's previous call.
    changed_median_ms: Option<f64>,
}

#[derive(Serialize)]
pub struct Report {
    order: Order,
    exhaustive: bool,
    session_per_size: bool,
    io_binding: bool,
    cuda_graph: bool,
    /// Why CUDA graphs were asked for but not used.
    graph_refused: Option<String>,
    /// The first call of each size (session set-up, search), left out of the rest.
    first_ms: Vec<(usize, f64)>,
    /// Per size, the largest difference of the last call's outputs from a plain session's
    /// on the same input (each call's input differs, so a stale buffer shows).
    max_abs_diff_vs_plain: Vec<(usize, f32)>,
    sizes: Vec<PerSize>,
    slow_share: f64,
    calls: Vec<Call>,
}

pub fn run(args: &EngineCallsArgs) -> anyhow::Result<Report> {
    let (name, dims) = args
        .input
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("--input is NAME:D1,D2,..."))?;
    let dims: Vec<usize> = dims
        .split(',')
        .map(|d| d.trim().parse())
        .collect::<Result<_, _>>()?;
    let sizes: Vec<usize> = args
        .rows
        .split(',')
        .map(|d| d.trim().parse())
        .collect::<Result<_, _>>()?;
    let options = OrtOptions {
        intra_op_threads: 1,
        inter_op_threads: 1,
        intra_op_spinning: false,
        io_binding: args.io_binding,
        gpu: args.gpu.map(|device_id| GpuOptions {
            device_id,
            memory_limit: Some(args.memory_limit),
            cudnn_exhaustive: args.exhaustive,
            cudnn_max_workspace: true,
            arena_same_as_requested: false,
            tensorrt: None,
            cuda_graph: Some(args.cuda_graph),
        }),
    };
    let plain = OrtOptions {
        io_binding: false,
        gpu: options.gpu.clone().map(|g| GpuOptions {
            cuda_graph: Some(false),
            ..g
        }),
        ..options.clone()
    };
    let model: Arc<OrtModel> =
        OrtModel::load(&args.model, options, args.onnxruntime_lib.as_deref())?;
    if args.session_per_size {
        let mut planned = sizes.clone();
        planned.sort_unstable();
        planned.dedup();
        model.plan_calls(&CallPlan {
            batched: true,
            batch_sizes: planned,
            fixed_shapes: true,
        });
    }
    let mut instance = Arc::clone(&model).new_instance()?;
    let order: Vec<usize> = match args.order {
        Order::Blocks => sizes
            .iter()
            .flat_map(|r| std::iter::repeat_n(*r, args.calls + 1))
            .collect(),
        Order::Alternate => std::iter::repeat_n(sizes.iter().copied(), args.calls + 1)
            .flatten()
            .collect(),
    };
    let mut last: Option<usize> = None;
    let mut first_ms = Vec::new();
    let mut calls = Vec::new();
    let mut last_of_size: Vec<(usize, Tensor, Vec<Tensor>)> = Vec::new();
    for (seed, rows) in order.into_iter().enumerate() {
        let shape: Vec<usize> = [rows].into_iter().chain(dims.iter().copied()).collect();
        let input = Tensor::noise(name, shape, seed as u32);
        let started = Instant::now();
        let output = instance.run(std::slice::from_ref(&input))?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        // With a session per size, no session ever sees another shape.
        let shape_changed = !args.session_per_size && last.is_some_and(|l| l != rows);
        last = Some(rows);
        last_of_size.retain(|(r, _, _)| *r != rows);
        last_of_size.push((rows, input, output));
        if first_ms.iter().all(|(r, _)| *r != rows) {
            first_ms.push((rows, ms));
            continue;
        }
        calls.push(Call {
            rows,
            shape_changed,
            ms,
        });
    }
    let sizes: Vec<PerSize> = sizes
        .iter()
        .map(|&rows| {
            let mut ms: Vec<f64> = calls
                .iter()
                .filter(|c| c.rows == rows)
                .map(|c| c.ms)
                .collect();
            ms.sort_by(f64::total_cmp);
            let median = quantile(&ms, 0.5);
            let mut changed: Vec<f64> = calls
                .iter()
                .filter(|c| c.rows == rows && c.shape_changed)
                .map(|c| c.ms)
                .collect();
            changed.sort_by(f64::total_cmp);
            PerSize {
                rows,
                calls: ms.len(),
                median_ms: median,
                p99_ms: quantile(&ms, 0.99),
                max_ms: ms.last().copied().unwrap_or(0.0),
                slow: ms.iter().filter(|m| **m > 3.0 * median).count(),
                changed_median_ms: (!changed.is_empty()).then(|| quantile(&changed, 0.5)),
            }
        })
        .collect();
    let slow: usize = sizes.iter().map(|s| s.slow).sum();
    drop(instance);
    let reference = OrtModel::load(&args.model, plain, args.onnxruntime_lib.as_deref())?;
    let mut reference = reference.new_instance()?;
    let mut max_abs_diff_vs_plain = Vec::new();
    for (rows, input, output) in last_of_size {
        let expected = reference.run(std::slice::from_ref(&input))?;
        let diff = output
            .iter()
            .zip(&expected)
            .map(|(a, b)| max_abs_diff(a, b))
            .fold(0f32, f32::max);
        max_abs_diff_vs_plain.push((rows, diff));
    }
    Ok(Report {
        order: args.order,
        exhaustive: args.exhaustive,
        session_per_size: args.session_per_size,
        io_binding: args.io_binding,
        cuda_graph: args.cuda_graph,
        graph_refused: model.graph_refusal().map(str::to_owned),
        first_ms,
        max_abs_diff_vs_plain,
        slow_share: slow as f64 / calls.len().max(1) as f64,
        sizes,
        calls,
    })
}

/// The `q` quantile of sorted values (nearest rank); 0 for none.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The largest elementwise difference of two FP32 tensors; infinite where shapes differ.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    match (&a.data, &b.data) {
        (TensorData::Fixed(x), TensorData::Fixed(y)) if a.shape == b.shape => x
            .chunks_exact(4)
            .zip(y.chunks_exact(4))
            .map(|(p, q)| {
                let p = f32::from_le_bytes(p.try_into().expect("4 bytes"));
                let q = f32::from_le_bytes(q.try_into().expect("4 bytes"));
                (p - q).abs()
            })
            .fold(0f32, f32::max),
        _ => f32::INFINITY,
    }
}
