//! Warms a model before it is called READY, and measures it while doing so: for each warm
//! shape, what one engine call costs in time and in peak memory at each candidate batch
//! size. The batcher and the memory budget act on these measurements, not on guesses.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    config::{ModelConfig, Warmup},
    spec::ModelSpec,
};
use crate::{
    backend::{Instance, Model},
    batching::cost::CostCurve,
    batching::cost::CostCurves,
    job::ShapeKey,
    tensor::{DataType, Tensor},
};

/// What warming measured.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// How many warm samples ran.
    pub samples: usize,
    pub curves: CostCurves,
    /// Peak bytes one instance allocates during one call, by rows (the largest over the
    /// warm shapes).
    pub peak_bytes: Vec<(usize, u64)>,
}

/// One input of a warm sample, without its batch size.
struct InputTemplate {
    name: String,
    datatype: DataType,
    /// Dims after the batch dimension (all dims when the model has none).
    dims: Vec<usize>,
    random: bool,
}

struct Sample {
    name: String,
    inputs: Vec<InputTemplate>,
    /// Rows the sample asks for (1 when the model has no batch dimension).
    rows: usize,
    count: u32,
}

/// Runs the warm samples, then measures each warm shape at every row count in
/// `candidates` (empty when the model has no batch dimension: then the sample as given).
/// With `all_sizes` false, measuring stops at the first size that costs more than 1.2x
/// per row what one row does: bigger calls will be run as pieces anyway, and measuring
/// them would only slow the start (PP-OCR rec at batch 8 takes ~260 ms a call on tract).
/// A memory budget needs every size's peak, so it asks for all.
pub fn run(
    model: &Arc<dyn Model>,
    spec: &ModelSpec,
    config: &ModelConfig,
    candidates: &[usize],
    all_sizes: bool,
) -> Result<Profile, String> {
    let samples = samples(spec, config)?;
    let batched = spec.max_batch_size > 0;
    let mut instance = Arc::clone(model)
        .new_instance()
        .map_err(|e| e.to_string())?;
    let mut profile = Profile {
        samples: samples.len(),
        ..Profile::default()
    };
    for sample in &samples {
        let inputs = build(&sample.inputs, batched.then_some(sample.rows));
        for _ in 0..sample.count {
            instance
                .run(&inputs)
                .map_err(|e| format!("warmup sample '{}' failed: {e}", sample.name))?;
        }
        let sizes: Vec<usize> = if batched {
            candidates.to_vec()
        } else {
            vec![1]
        };
        let mut points = Vec::new();
        // An engine that keeps its own books (ONNX Runtime) measures every size of a
        // sample on one instance, sizes ascending: making an instance is making a session
        // (a third of a second for PP-OCR rec on 2 cores, twice per size otherwise), and
        // its arena's high-water mark after each size is that size's peak.
        // The first sample's is the instance that ran it, later ones a fresh one each.
        let first_sample = profile.curves.by_shape.is_empty();
        let mut fresh;
        let mut books = if model.traits().counts_host_memory {
            None
        } else if first_sample {
            Some(&mut instance)
        } else {
            fresh = Arc::clone(model)
                .new_instance()
                .map_err(|e| e.to_string())?;
            Some(&mut fresh)
        };
        for rows in sizes {
            let inputs = build(&sample.inputs, batched.then_some(rows));
            // The sample's own calls built the plan for its shape.
            let planned = sample.count > 0 && (!batched || rows == sample.rows);
            let measured = match books.as_mut() {
                // A fresh instance has planned nothing.
                Some(instance) => measure_on(
                    instance.as_mut(),
                    model.as_ref(),
                    &inputs,
                    planned && first_sample,
                ),
                None => measure(model, &inputs, planned),
            };
            let (took, peak) = measured.map_err(|e| {
                format!(
                    "warmup sample '{}' at batch {rows} failed: {e}",
                    sample.name
                )
            })?;
            points.push((rows, took));
            if let Some(peak) = peak {
                match profile.peak_bytes.iter_mut().find(|(r, _)| *r == rows) {
                    Some((_, p)) => *p = (*p).max(peak),
                    None => profile.peak_bytes.push((rows, peak)),
                }
            }
            let per_row = |(r, t): (usize, Duration)| t.as_secs_f64() / r as f64;
            if !all_sizes && per_row((rows, took)) > 1.2 * per_row(points[0]) {
                break;
            }
        }
        let curve = CostCurve::new(points);
        if profile.curves.by_shape.is_empty() {
            profile.curves.fallback = curve.clone();
        }
        profile.curves.by_shape.insert(ShapeKey::of(&inputs), curve);
    }
    profile.peak_bytes.sort_unstable();
    Ok(profile)
}

/// The inputs each serving instance runs before the model is READY: every warm sample at
/// each of `rows`, and at its own batch size too unless `only_rows` (calls padded to
/// buckets never carry another count, and a CUDA graph session takes one shape only). Measuring ran on instances of its own;
/// an engine that prepares per instance and per shape (cuDNN's algorithm search, CUDA
/// handles per thread) must do so here, not on the first requests.
pub fn instance_inputs(
    spec: &ModelSpec,
    config: &ModelConfig,
    rows: &[usize],
    only_rows: bool,
) -> Result<Vec<Vec<Tensor>>, String> {
    let batched = spec.max_batch_size > 0;
    let mut sets = Vec::new();
    for sample in samples(spec, config)? {
        let mut counts = if batched && only_rows {
            Vec::new()
        } else {
            vec![sample.rows]
        };
        if batched {
            counts.extend(rows.iter().copied().filter(|r| *r != sample.rows));
        }
        for r in counts {
            sets.push(build(&sample.inputs, batched.then_some(r)));
        }
    }
    Ok(sets)
}

/// One call at these inputs, timed on an instance whose plan a first call has built, and
/// the peak bytes a fresh instance allocates on this thread doing the same (its run state
/// and every intermediate tensor): for an engine that allocates through Rust's
/// allocator (an engine with books of its own is measured by `measure_on`).
fn measure(
    model: &Arc<dyn Model>,
    inputs: &[Tensor],
    planned: bool,
) -> Result<(Duration, Option<u64>), crate::backend::BackendError> {
    if !planned {
        // A shape's first call builds its plan: neither its time nor its memory is a
        // call's.
        Arc::clone(model).new_instance()?.run(inputs)?;
    }
    let clock = Clock::for_model(model.as_ref());
    let mut instance = Arc::clone(model).new_instance()?;
    // The fresh instance's first call: its peak memory (only this thread's allocations:
    // loads of other models in parallel do not disturb it, and tract computes one call
    // on the calling thread), and a first timing.
    let first = clock.now();
    let mut result = Ok(());
    let info = crate::heap::measure(|| result = instance.run(inputs).map(drop));
    result?;
    let first = clock.since(first);
    // A call over 50 ms is timed well enough once (the plan was built before, its state
    // is small); shorter ones by the best of up to three more, within about 50 ms: one
    // call alone is too noisy for calls of a millisecond.
    let took = if first > SLOW_CALL {
        first
    } else {
        best_of_three(instance.as_mut(), inputs, &clock, Duration::MAX)?
    };
    Ok((took, Some(info.bytes_max)))
}

/// One instance measuring size after size (an engine that keeps its own books), the
/// peak being its high-water mark so far. A size's first call plans it (ONNX Runtime
/// traces its memory): a call over 50 ms is timed by that call alone, as its planning
/// is a small part of it (PP-OCR det, 2 cores: 105 ms first, 88 ms after at 640x640;
/// 251 and 245 ms at 736x1600); shorter ones are timed again after it.
fn measure_on(
    instance: &mut dyn Instance,
    model: &dyn Model,
    inputs: &[Tensor],
    planned: bool,
) -> Result<(Duration, Option<u64>), crate::backend::BackendError> {
    let clock = Clock::for_model(model);
    let mut took = Duration::MAX;
    if !planned {
        let started = clock.now();
        instance.run(inputs)?;
        took = clock.since(started);
        if took > SLOW_CALL {
            return Ok((took, instance.peak_bytes()));
        }
    }
    let took = best_of_three(instance, inputs, &clock, took)?;
    Ok((took, instance.peak_bytes()))
}

/// The best of `took` and up to three more calls, within about `SLOW_CALL`.
fn best_of_three(
    instance: &mut dyn Instance,
    inputs: &[Tensor],
    clock: &Clock,
    mut took: Duration,
) -> Result<Duration, crate::backend::BackendError> {
    let timing = Instant::now();
    for _ in 0..3 {
        let started = clock.now();
        instance.run(inputs)?;
        took = took.min(clock.since(started));
        if timing.elapsed() > SLOW_CALL {
            break;
        }
    }
    Ok(took)
}

/// Calls slower than this are timed once; faster ones best of several within it.
const SLOW_CALL: Duration = Duration::from_millis(50);

/// What a call's cost is read from: the calling thread's CPU time for an engine that
/// computes there alone, so that models loading in parallel (or anything else running)
/// do not inflate the curve; the wall clock for engines with threads of their own.
enum Clock {
    ThreadCpu,
    Wall,
}

impl Clock {
    fn for_model(model: &dyn Model) -> Clock {
        if model.traits().computes_on_calling_thread && thread_cpu().is_some() {
            Clock::ThreadCpu
        } else {
            Clock::Wall
        }
    }

    fn now(&self) -> Duration {
        match self {
            Clock::ThreadCpu => thread_cpu().unwrap_or_default(),
            Clock::Wall => WALL_START.get_or_init(Instant::now).elapsed(),
        }
    }

    fn since(&self, start: Duration) -> Duration {
        self.now().saturating_sub(start)
    }
}

static WALL_START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// This thread's time on a CPU so far (CLOCK_THREAD_CPUTIME_ID).
fn thread_cpu() -> Option<Duration> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Some(Duration::new(
        u64::try_from(t.tv_sec).ok()?,
        u32::try_from(t.tv_nsec).ok()?,
    ))
}

fn samples(spec: &ModelSpec, config: &ModelConfig) -> Result<Vec<Sample>, String> {
    match &config.model_warmup {
        Some(Warmup::Enabled(false)) => Ok(Vec::new()),
        // By default warm the one shape a fully specified model takes.
        None | Some(Warmup::Enabled(true)) => {
            if !spec.inputs.iter().all(|i| i.dims.iter().all(|d| *d > 0)) {
                return Ok(Vec::new());
            }
            let inputs = spec
                .inputs
                .iter()
                .map(|i| InputTemplate {
                    name: i.name.clone(),
                    datatype: i.datatype,
                    dims: i.dims.iter().map(|d| *d as usize).collect(),
                    random: false,
                })
                .collect();
            Ok(vec![Sample {
                name: "default".into(),
                inputs,
                rows: 1,
                count: 1,
            }])
        }
        Some(Warmup::Samples(list)) => list
            .iter()
            .map(|sample| {
                let inputs = spec
                    .inputs
                    .iter()
                    .map(|i| {
                        let given = sample.inputs.get(&i.name).ok_or_else(|| {
                            format!(
                                "model_warmup '{}': no data for input '{}'",
                                sample.name, i.name
                            )
                        })?;
                        if given.data_type != i.datatype {
                            return Err(format!(
                                "model_warmup '{}': input '{}' is {} but the model takes {}",
                                sample.name,
                                i.name,
                                given.data_type.config_name(),
                                i.datatype.config_name()
                            ));
                        }
                        Ok(InputTemplate {
                            name: i.name.clone(),
                            datatype: i.datatype,
                            dims: given.dims.iter().map(|d| *d as usize).collect(),
                            random: given.random_data,
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                if let Some(extra) = sample
                    .inputs
                    .keys()
                    .find(|k| !spec.inputs.iter().any(|i| &i.name == *k))
                {
                    return Err(format!(
                        "model_warmup '{}': the model has no input '{extra}'",
                        sample.name
                    ));
                }
                Ok(Sample {
                    name: sample.name.clone(),
                    inputs,
                    rows: sample.batch_size.get() as usize,
                    count: sample.count.get(),
                })
            })
            .collect(),
    }
}

fn build(inputs: &[InputTemplate], rows: Option<usize>) -> Vec<Tensor> {
    inputs
        .iter()
        .map(|t| {
            let shape: Vec<usize> = rows.into_iter().chain(t.dims.iter().copied()).collect();
            filled(&t.name, t.datatype, shape, t.random)
        })
        .collect()
}

/// Zeros, or for FP32 a fixed pseudo-random pattern in [0, 1) (`random_data`). BYTES
/// elements are the text "0", not empty: models that read numbers from strings (Triton's
/// `simple_string` casts them) fail on an empty one, and text models take it as a word.
fn filled(name: &str, datatype: DataType, shape: Vec<usize>, random: bool) -> Tensor {
    if datatype == DataType::Bytes {
        let count = shape.iter().product();
        return Tensor {
            name: name.to_owned(),
            datatype,
            shape,
            data: crate::tensor::TensorData::Bytes(vec![bytes::Bytes::from_static(b"0"); count]),
        };
    }
    if !(random && matches!(datatype, DataType::Fp32)) {
        return Tensor::zeros(name, datatype, shape);
    }
    Tensor::noise(name, shape, 0)
}
