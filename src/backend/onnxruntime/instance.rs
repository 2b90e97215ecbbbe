//! An ONNX Runtime instance: its sessions (one per batch bucket), plain runs, runs through
//! IoBinding, and CUDA graphs captured, checked against a plain run, and replayed.

use std::sync::Arc;

use ort::{
    memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType},
    session::{IoBinding, RunOptions, Session},
    value::{DynTensor, DynTensorValueType, DynValue, ValueType},
    AsPointer,
};

use super::{
    session::{gpu_guard, OrtModel, CAPTURE},
    values::{element_type, from_ort, to_ort},
};
use crate::{
    backend::{BackendError, CallPlan, EngineTraits, Instance, Model, Signature},
    tensor::{le_chunks as le, DataType, Tensor, TensorData},
};

pub(super) struct OrtInstance {
    model: Arc<OrtModel>,
    /// One session per batch size (the leading dimension it serves; None: any) where
    /// calls are padded to several, else one for all; each made at its first call.
    sessions: Vec<(Option<usize>, Option<ShapeSession>)>,
    /// How many sessions split the instance's memory budget.
    share: usize,
}

struct ShapeSession {
    session: Session,
    /// Runs replay a captured CUDA graph.
    graph: bool,
    /// The IoBinding state for the shape last seen.
    bound: Option<Bound>,
}

/// Buffers bound to a session for one set of input shapes. Fields drop in order: the
/// tensors before the allocator that made them.
struct Bound {
    binding: IoBinding,
    shapes: Vec<Vec<usize>>,
    inputs: Vec<DynTensor>,
    /// Made the device buffers (the binding holds the output buffers).
    _allocator: Allocator,
}

/// The model's side as the workers see it; its instances are made here.
impl Model for OrtModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn traits(&self) -> EngineTraits {
        EngineTraits {
            counts_host_memory: false,
            threads_per_call: self.options.intra_op_threads,
            ..EngineTraits::default()
        }
    }

    fn plan_calls(&self, calls: &CallPlan) {
        let _ = self
            .plan
            .set((calls.batch_sizes.clone(), calls.fixed_shapes));
    }

    fn new_instance(self: Arc<Self>) -> Result<Box<dyn Instance>, BackendError> {
        let sizes = self.plan.get().map(|p| p.0.clone()).unwrap_or_default();
        let keys: Vec<Option<usize>> = if sizes.len() > 1 {
            sizes.into_iter().map(Some).collect()
        } else {
            vec![None]
        };
        let share = keys.len();
        Ok(Box::new(OrtInstance::new(self, keys, share)?))
    }
}

impl OrtInstance {
    /// An instance with a session slot per key, the first session made now so that a
    /// model that cannot make one fails here; the others when their batch size first runs
    /// (warm-up, before READY).
    pub(super) fn new(
        model: Arc<OrtModel>,
        keys: Vec<Option<usize>>,
        share: usize,
    ) -> Result<OrtInstance, BackendError> {
        let mut instance = OrtInstance {
            model,
            sessions: keys.into_iter().map(|rows| (rows, None)).collect(),
            share,
        };
        instance.session(0)?;
        Ok(instance)
    }

    /// The session for a call of `rows`: its own, else the smallest larger, else the last.
    fn session_for(&self, rows: usize) -> usize {
        let keys: Vec<Option<usize>> = self.sessions.iter().map(|(k, _)| *k).collect();
        keys.iter()
            .position(|k| *k == Some(rows))
            .or_else(|| {
                (0..keys.len())
                    .filter(|i| keys[*i].is_none_or(|r| r >= rows))
                    .min_by_key(|i| keys[*i])
            })
            .unwrap_or(keys.len() - 1)
    }

    /// The session at `ix`, made now if it has not been.
    fn session(&mut self, ix: usize) -> Result<&mut ShapeSession, BackendError> {
        let slot = &mut self.sessions[ix].1;
        if slot.is_none() {
            let (session, graph) = self.model.graph_session(self.share)?;
            *slot = Some(ShapeSession {
                session,
                graph,
                bound: None,
            });
        }
        Ok(slot.as_mut().expect("made above"))
    }
}

impl Instance for OrtInstance {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let rows = inputs
            .first()
            .and_then(|t| t.shape.first())
            .copied()
            .unwrap_or(1);
        let ix = self.session_for(rows);
        let model = Arc::clone(&self.model);
        let bindable = inputs
            .iter()
            .all(|t| matches!(t.data, TensorData::Fixed(_)));
        let share = self.share;
        let shape = self.session(ix)?;
        if !(model.options.io_binding || shape.graph) || !bindable {
            return run_plain(&model, &mut shape.session, inputs);
        }
        let capturing = shape.graph && shape.bound.is_none();
        match run_bound(&model, shape, inputs) {
            // A graph that fails to capture, or whose replay disagrees with a plain run, is
            // given up for this model: the session is rebuilt plain and the call made again.
            Err(e) if capturing => {
                model.refuse_graph(format!("capturing the first run failed: {e}"));
                shape.bound = None;
                shape.session = model.session(share, false).map_err(BackendError::Load)?;
                shape.graph = false;
                run_bound(&model, shape, inputs)
            }
            result => result,
        }
    }

    /// The `MaxInUse` of the instance's session arenas added up (activations, outputs and
    /// whatever a session did not share), read through `AllocatorGetStats`.
    fn peak_bytes(&self) -> Option<u64> {
        let (device, id) = match &self.model.options.gpu {
            Some(gpu) => (AllocationDevice::CUDA, gpu.device_id),
            None => (AllocationDevice::CPU, 0),
        };
        self.sessions
            .iter()
            .filter_map(|(_, s)| s.as_ref())
            .filter_map(|s| {
                let info = MemoryInfo::new(
                    device.clone(),
                    id,
                    AllocatorType::Arena,
                    MemoryType::Default,
                )
                .ok()?;
                let allocator = Allocator::new(&s.session, info).ok()?;
                arena_max_in_use(&allocator)
            })
            .reduce(|a, b| a + b)
    }
}

fn run_plain(
    model: &OrtModel,
    session: &mut Session,
    inputs: &[Tensor],
) -> Result<Vec<Tensor>, BackendError> {
    let values = inputs
        .iter()
        .map(|t| to_ort(t).map(|v| (t.name.clone(), v.into_dyn())))
        .collect::<Result<Vec<(String, DynValue)>, _>>()?;
    let _gpu = gpu_guard(model);
    let outputs = session
        .run(values)
        .map_err(|e| BackendError::Execution(e.to_string()))?;
    read_outputs(model, &outputs)
}

/// A run through IoBinding. The first call of a shape binds input buffers of that shape,
/// runs once with the outputs placed by ONNX Runtime (no graph capture on that run), then
/// binds output buffers of the shapes it produced, so that every later run (and a CUDA
/// graph's capture and replays) reads and writes the same addresses. A graph session
/// never changes shape, and its first replay must agree with the plain first run.
fn run_bound(
    model: &OrtModel,
    shape: &mut ShapeSession,
    inputs: &[Tensor],
) -> Result<Vec<Tensor>, BackendError> {
    let exec = |e: ort::Error| BackendError::Execution(e.to_string());
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape.clone()).collect();
    let fresh = shape.bound.as_ref().is_none_or(|b| b.shapes != shapes);
    if !fresh {
        let _gpu = gpu_guard(model);
        let bound = shape.bound.as_mut().expect("bound");
        fill(&mut bound.inputs, inputs)?;
        let outputs = shape.session.run_binding(&bound.binding).map_err(exec)?;
        return read_outputs(model, &outputs);
    }
    if let (true, Some(bound)) = (shape.graph, &shape.bound) {
        return Err(BackendError::Execution(format!(
            "this session replays a CUDA graph captured for input shapes {:?}, not {shapes:?}",
            bound.shapes
        )));
    }
    shape.bound = None;
    let (bound, plain) = {
        let _gpu = gpu_guard(model);
        bind(model, &mut shape.session, inputs, shapes, shape.graph)?
    };
    let bound = shape.bound.insert(bound);
    if !shape.graph {
        return Ok(plain);
    }
    // ONNX Runtime captures within this one call (after the regular run it needs) and
    // replays the graph to produce its outputs.
    let replayed = {
        let _capturing = CAPTURE.write().unwrap_or_else(|e| e.into_inner());
        let outputs = shape.session.run_binding(&bound.binding).map_err(exec)?;
        read_outputs(model, &outputs)?
    };
    match replayed.iter().zip(&plain).find(|(a, b)| !agree(a, b)) {
        Some((a, _)) => Err(BackendError::Execution(format!(
            "output '{}' of the replayed CUDA graph disagrees with a plain run",
            a.name
        ))),
        None => Ok(replayed),
    }
}

/// Binds input buffers of `shapes`, runs once with the outputs placed by ONNX Runtime
/// (skipping graph capture), and binds output buffers of the shapes that run produced;
/// returns them with that run's outputs.
fn bind(
    model: &OrtModel,
    session: &mut Session,
    inputs: &[Tensor],
    shapes: Vec<Vec<usize>>,
    graph: bool,
) -> Result<(Bound, Vec<Tensor>), BackendError> {
    let exec = |e: ort::Error| BackendError::Execution(e.to_string());
    let device = match &model.options.gpu {
        Some(gpu) => MemoryInfo::new(
            AllocationDevice::CUDA,
            gpu.device_id,
            AllocatorType::Device,
            MemoryType::Default,
        ),
        None => MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        ),
    }
    .map_err(exec)?;
    let allocator = Allocator::new(session, device.clone()).map_err(exec)?;
    let mut binding = session.create_binding().map_err(exec)?;
    let mut buffers = Vec::with_capacity(inputs.len());
    for t in inputs {
        let mut buffer =
            DynTensor::new(&allocator, element_type(t.datatype), t.shape.clone()).map_err(exec)?;
        to_ort(t)?.copy_into(&mut buffer).map_err(exec)?;
        binding.bind_input(t.name.as_str(), &buffer).map_err(exec)?;
        buffers.push(buffer);
    }
    for sig in &model.signature.outputs {
        binding
            .bind_output_to_device(sig.name.as_str(), &device)
            .map_err(exec)?;
    }
    // `gpu_graph_id` -1: a regular run, not counted towards (nor starting) a capture.
    let mut skip_graph = RunOptions::new().map_err(exec)?;
    if graph {
        skip_graph.set("gpu_graph_id", "-1").map_err(exec)?;
    }
    let (placed, plain) = {
        let outputs = session
            .run_binding_with_options(&binding, &skip_graph)
            .map_err(exec)?;
        let placed = model
            .signature
            .outputs
            .iter()
            .map(
                |sig| match outputs.get(sig.name.as_str()).map(|v| v.dtype()) {
                    Some(ValueType::Tensor { ty, shape, .. }) => Ok((*ty, shape.to_vec())),
                    other => Err(BackendError::Execution(format!(
                        "output '{}' is {other:?}, not a tensor",
                        sig.name
                    ))),
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        (placed, read_outputs(model, &outputs)?)
    };
    for (sig, (ty, dims)) in model.signature.outputs.iter().zip(placed) {
        let buffer = DynTensor::new(&allocator, ty, dims).map_err(exec)?;
        binding
            .bind_output(sig.name.as_str(), buffer)
            .map_err(exec)?;
    }
    let bound = Bound {
        binding,
        shapes,
        inputs: buffers,
        _allocator: allocator,
    };
    Ok((bound, plain))
}

fn read_outputs(
    model: &OrtModel,
    outputs: &ort::session::SessionOutputs<'_>,
) -> Result<Vec<Tensor>, BackendError> {
    model
        .signature
        .outputs
        .iter()
        .map(|sig| {
            let value = outputs.get(sig.name.as_str()).ok_or_else(|| {
                BackendError::Execution(format!("output '{}' missing from the run", sig.name))
            })?;
            to_host(&sig.name, value)
        })
        .collect()
}

/// Two runs' outputs agree: FP32 within 1e-3 (relative past 1), anything else exactly.
fn agree(a: &Tensor, b: &Tensor) -> bool {
    if a.shape != b.shape || a.datatype != b.datatype {
        return false;
    }
    match (&a.data, &b.data, a.datatype) {
        (TensorData::Fixed(x), TensorData::Fixed(y), DataType::Fp32) => {
            le::<4>(x).zip(le::<4>(y)).all(|(p, q)| {
                let (p, q) = (f32::from_le_bytes(p), f32::from_le_bytes(q));
                (p - q).abs() <= 1e-3 * q.abs().max(1.0)
            })
        }
        _ => a.data == b.data,
    }
}

/// Copies each call's data into the bound input buffers (to the device on a GPU).
fn fill(buffers: &mut [DynTensor], inputs: &[Tensor]) -> Result<(), BackendError> {
    for (buffer, t) in buffers.iter_mut().zip(inputs) {
        to_ort(t)?
            .copy_into(&mut *buffer)
            .map_err(|e| BackendError::Execution(format!("input '{}': {e}", t.name)))?;
    }
    Ok(())
}

/// An output as wharf's tensor, copied to the host first where it lives on a device.
fn to_host(name: &str, value: &DynValue) -> Result<Tensor, BackendError> {
    let fail = |e: ort::Error| BackendError::Execution(format!("output '{name}': {e}"));
    let tensor = value
        .view()
        .downcast::<DynTensorValueType>()
        .map_err(fail)?;
    if tensor.memory_info().is_cpu_accessible() {
        return from_ort(name, value);
    }
    let host = tensor.to(AllocationDevice::CPU, 0).map_err(fail)?;
    from_ort(name, &host.into_dyn())
}

/// The `MaxInUse` entry of an arena allocator's statistics; None for allocators that keep
/// none. The one unsafe block in wharf: `ort` has no safe call for allocator statistics.
#[allow(unsafe_code)]
fn arena_max_in_use(allocator: &Allocator) -> Option<u64> {
    let api = ort::api();
    let mut stats: *mut ort::sys::OrtKeyValuePairs = std::ptr::null_mut();
    // SAFETY: the allocator pointer is live for the borrow; on success ONNX Runtime hands
    // over `stats`, released below; the value string it returns lives until then.
    unsafe {
        let status = (api.AllocatorGetStats)(allocator.ptr(), &mut stats);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return None;
        }
        if stats.is_null() {
            return None;
        }
        let value = (api.GetKeyValue)(stats, c"MaxInUse".as_ptr());
        let parsed = (!value.is_null())
            .then(|| std::ffi::CStr::from_ptr(value).to_str().ok()?.parse().ok())
            .flatten();
        (api.ReleaseKeyValuePairs)(stats);
        parsed
    }
}
