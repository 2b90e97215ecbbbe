//! tract-onnx engine: one optimized plan per concrete input shape, cached and shared by all
//! instances; each instance keeps its own run state per plan.

use std::{
    num::NonZeroUsize,
    path::Path,
    sync::{Arc, Mutex, OnceLock},
};

use bytes::Bytes;
use lru::LruCache;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{Factoid, InferenceFact};

use super::{BackendError, EngineTraits, Instance, Model, Signature};
use crate::tensor::{self, DataType, Tensor as WharfTensor, TensorData};

/// Plans kept per model. Each optimized plan holds its own packed weights, so the bound is
/// what keeps a stream of odd shapes (det on arbitrary image sizes) from growing memory.
const PLAN_CACHE_CAPACITY: NonZeroUsize = NonZeroUsize::new(16).expect("non-zero");
/// Run states kept per instance; a state is cheap to rebuild, so a handful suffices.
const STATE_CACHE_CAPACITY: NonZeroUsize = NonZeroUsize::new(8).expect("non-zero");

type InputShapes = Vec<Vec<usize>>;
type Plan = Arc<TypedRunnableModel>;
/// A plan being built or built; a failed build is cached too, so a shape the graph
/// rejects costs one attempt, not one per request.
type PlanCell = Arc<OnceLock<Result<Plan, String>>>;

pub struct TractModel {
    /// The parsed graph before shapes are fixed; cloned and specialised per shape.
    graph: InferenceModel,
    signature: Signature,
    input_types: Vec<DatumType>,
    plans: Mutex<LruCache<InputShapes, PlanCell>>,
}

impl TractModel {
    pub fn load(path: &Path) -> Result<Arc<TractModel>, BackendError> {
        let load = |e: TractError| BackendError::Load(format!("{}: {e:#}", path.display()));
        let onnx = tract_onnx::onnx();
        let proto = onnx.proto_model_for_path(path).map_err(load)?;
        let graph = onnx.model_for_proto_model(&proto).map_err(load)?;
        let signature = super::onnx::signature(&proto);
        // The declared type where the file gives one; tract's own guess otherwise.
        let input_types = signature
            .inputs
            .iter()
            .zip(graph.input_outlets().map_err(load)?)
            .map(|(sig, outlet)| {
                sig.datatype
                    .and_then(to_datum_type)
                    .or_else(|| graph.outlet_fact(*outlet).ok()?.datum_type.concretize())
                    .unwrap_or(DatumType::F32)
            })
            .collect();
        Ok(Arc::new(TractModel {
            graph,
            signature,
            input_types,
            plans: Mutex::new(LruCache::new(PLAN_CACHE_CAPACITY)),
        }))
    }

    /// The plan for these shapes, built on first use and shared afterwards.
    fn plan(&self, shapes: &InputShapes) -> Result<Plan, BackendError> {
        let cell = {
            let mut plans = self.plans.lock().expect("plan cache lock");
            plans
                .get_or_insert(shapes.clone(), Default::default)
                .clone()
        };
        // Built outside the lock: other shapes stay servable while this one compiles.
        cell.get_or_init(|| self.build_plan(shapes).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|reason| BackendError::ShapeRejected {
                shapes: shapes
                    .iter()
                    .map(|s| tensor::shape_string(s))
                    .collect::<Vec<_>>()
                    .join(", "),
                reason,
            })
    }

    fn build_plan(&self, shapes: &InputShapes) -> TractResult<Plan> {
        let mut graph = self.graph.clone();
        for (ix, (shape, dt)) in shapes.iter().zip(&self.input_types).enumerate() {
            graph.set_input_fact(ix, InferenceFact::dt_shape(*dt, shape.clone()))?;
        }
        graph.into_optimized()?.into_runnable()
    }
}

impl Model for TractModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Plans are built once per shape and shared; an instance's run state is cheap.
    fn traits(&self) -> EngineTraits {
        EngineTraits {
            computes_on_calling_thread: true,
            warms_each_instance: false,
            ..EngineTraits::default()
        }
    }

    fn new_instance(self: Arc<Self>) -> Result<Box<dyn Instance>, BackendError> {
        Ok(Box::new(TractInstance {
            model: self,
            states: LruCache::new(STATE_CACHE_CAPACITY),
        }))
    }
}

struct TractInstance {
    model: Arc<TractModel>,
    states: LruCache<InputShapes, TypedSimpleState>,
}

impl Instance for TractInstance {
    fn run(&mut self, inputs: &[WharfTensor]) -> Result<Vec<WharfTensor>, BackendError> {
        let shapes: InputShapes = inputs.iter().map(|t| t.shape.clone()).collect();
        let state = match self.states.get_mut(&shapes) {
            Some(state) => state,
            None => {
                let plan = self.model.plan(&shapes)?;
                let state = plan
                    .spawn()
                    .map_err(|e| BackendError::Execution(format!("{e:#}")))?;
                self.states.get_or_insert_mut(shapes, || state)
            }
        };
        let values = inputs
            .iter()
            .map(|t| to_tract(t).map(TValue::from))
            .collect::<Result<TVec<_>, _>>()?;
        let outputs = state
            .run(values)
            .map_err(|e| BackendError::Execution(format!("{e:#}")))?;
        outputs
            .into_iter()
            .zip(&self.model.signature.outputs)
            .map(|(value, sig)| from_tract(&sig.name, &value))
            .collect()
    }
}

fn to_datum_type(dt: DataType) -> Option<DatumType> {
    Some(match dt {
        DataType::Bool => DatumType::Bool,
        DataType::Uint8 => DatumType::U8,
        DataType::Uint16 => DatumType::U16,
        DataType::Uint32 => DatumType::U32,
        DataType::Uint64 => DatumType::U64,
        DataType::Int8 => DatumType::I8,
        DataType::Int16 => DatumType::I16,
        DataType::Int32 => DatumType::I32,
        DataType::Int64 => DatumType::I64,
        DataType::Fp16 => DatumType::F16,
        DataType::Fp32 => DatumType::F32,
        DataType::Fp64 => DatumType::F64,
        DataType::Bytes => DatumType::String,
        DataType::Bf16 => return None,
    })
}

fn from_datum_type(dt: DatumType) -> Option<DataType> {
    DataType::ALL
        .into_iter()
        .find(|d| to_datum_type(*d) == Some(dt))
}

fn to_tract(t: &WharfTensor) -> Result<Tensor, BackendError> {
    let dt = to_datum_type(t.datatype).ok_or_else(|| {
        BackendError::Unsupported(format!(
            "input '{}': the tract backend has no {} type",
            t.name, t.datatype
        ))
    })?;
    let engine = |e: TractError| BackendError::Execution(format!("input '{}': {e:#}", t.name));
    match &t.data {
        TensorData::Fixed(bytes) => {
            let mut tensor = Tensor::zero_dt(dt, &t.shape).map_err(engine)?;
            // Validation guarantees the length, and that BOOL bytes are 0 or 1.
            tensor.as_bytes_mut().copy_from_slice(bytes);
            Ok(tensor)
        }
        TensorData::Bytes(items) => {
            let strings = super::utf8_strings(t, items, "tract")?;
            let array = tract_ndarray::ArrayD::from_shape_vec(t.shape.clone(), strings)
                .map_err(|e| engine(e.into()))?;
            Ok(array.into_tensor())
        }
    }
}

fn from_tract(name: &str, value: &TValue) -> Result<WharfTensor, BackendError> {
    let datatype = from_datum_type(value.datum_type()).ok_or_else(|| {
        BackendError::Unsupported(format!(
            "output '{name}' has engine type {:?}, which has no KServe datatype",
            value.datum_type()
        ))
    })?;
    let data = if datatype == DataType::Bytes {
        let strings = value
            .to_plain_array_view::<String>()
            .map_err(|e| BackendError::Execution(format!("{e:#}")))?;
        TensorData::Bytes(
            strings
                .iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
        )
    } else {
        TensorData::Fixed(Bytes::copy_from_slice(value.as_bytes()))
    };
    Ok(WharfTensor {
        name: name.to_owned(),
        datatype,
        shape: value.shape().to_vec(),
        data,
    })
}
