//! tract-onnx engine: one optimized plan per concrete input shape, cached and shared by all
//! instances; each instance keeps its own run state per plan. A batched model's rows run
//! whole or one by one, whichever its first multi-row call measures faster.

mod plans;
mod shared_weights;

use std::{
    num::NonZeroUsize,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use lru::LruCache;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{Factoid, InferenceFact};

use self::{
    plans::{InputShapes, Plans},
    shared_weights::SharedWeights,
};
use super::{BackendError, CallPlan, EngineTraits, Instance, Model, Signature};
use crate::tensor::{self, DataType, Tensor as WharfTensor, TensorData};

/// Plans kept per model, and the heap their builds may keep together (what the counting
/// allocator saw each build keep). A model's first plan holds its packed weights (PP-OCR
/// rec 12.6 MiB, det 6.6-7.7, cls 1.8); later ones hold only what they do not share with
/// an earlier plan (`shared_weights`: rec 2.7-6.8 MiB a width), and pages of other sizes
/// and line groups of other widths each need one: with 16 plans and no byte bound, twenty
/// varied pages took the pipeline to 555 MiB. A plan let go whose weights a later plan
/// shares leaves them counted with neither: the bound is the heap's, give or take that.
const PLAN_CACHE_CAPACITY: usize = 16;
const PLAN_CACHE_BYTES: u64 = 64 << 20;
/// Run states kept per instance; a state is cheap to rebuild, so a handful suffices.
const STATE_CACHE_CAPACITY: NonZeroUsize = NonZeroUsize::new(8).expect("non-zero");

pub struct TractModel {
    /// The parsed graph before shapes are fixed; cloned and specialised per shape.
    graph: InferenceModel,
    signature: Signature,
    input_types: Vec<DatumType>,
    plans: Plans<TypedRunnableModel>,
    /// The packed weights its plans hold, each kept once.
    weights: SharedWeights,
    /// Dimension 0 is independent rows (`CallPlan::batched`), so a batch may run row by row.
    batched: AtomicBool,
    /// How multi-row calls run, decided by the first one.
    rows: OnceLock<Rows>,
}

/// How a batched model runs a call of several rows. On tract, a convolutional model's
/// batch costs more per row than its rows one by one (PP-OCR's recogniser at 320 wide:
/// 22 ms a row alone, 37 ms a row in a batch of 8; its direction classifier 1.7 against
/// 3.7 ms), while a tiny model gains from one call. One by one also needs one plan per
/// row shape instead of one per row count and shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    Whole,
    OneByOne,
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
            plans: Plans::new(PLAN_CACHE_CAPACITY, PLAN_CACHE_BYTES),
            weights: SharedWeights::default(),
            batched: AtomicBool::new(false),
            rows: OnceLock::new(),
        }))
    }

    /// The plan for these shapes, built on first use and shared afterwards.
    fn plan(&self, shapes: &InputShapes) -> Result<Arc<TypedRunnableModel>, BackendError> {
        self.plans
            .get(shapes, || {
                self.build_plan(shapes).map_err(|e| format!("{e:#}"))
            })
            .map_err(|reason| BackendError::ShapeRejected {
                shapes: shapes
                    .iter()
                    .map(|s| tensor::shape_string(s))
                    .collect::<Vec<_>>()
                    .join(", "),
                reason,
            })
    }

    fn build_plan(&self, shapes: &InputShapes) -> TractResult<Arc<TypedRunnableModel>> {
        let mut graph = self.graph.clone();
        for (ix, (shape, dt)) in shapes.iter().zip(&self.input_types).enumerate() {
            graph.set_input_fact(ix, InferenceFact::dt_shape(*dt, shape.clone()))?;
        }
        let started = Instant::now();
        let mut optimized = graph.into_optimized()?;
        let shared = self.weights.share(&mut optimized);
        let plan = optimized.into_runnable()?;
        tracing::debug!(shapes = ?shapes, ms = started.elapsed().as_millis() as u64, shared_bytes = shared, "tract: plan built");
        Ok(plan)
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

    fn plan_calls(&self, calls: &CallPlan) {
        self.batched.store(calls.batched, Ordering::Relaxed);
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
        let rows = inputs.first().and_then(|t| t.shape.first().copied());
        let rows = match rows {
            Some(rows) if rows > 1 && self.model.batched.load(Ordering::Relaxed) => rows,
            _ => return self.run_whole(inputs),
        };
        match self.model.rows.get() {
            Some(Rows::Whole) => self.run_whole(inputs),
            Some(Rows::OneByOne) => self.run_rows(inputs, rows),
            None => self.choose_rows(inputs, rows),
        }
    }
}

impl TractInstance {
    fn run_whole(&mut self, inputs: &[WharfTensor]) -> Result<Vec<WharfTensor>, BackendError> {
        let shapes: InputShapes = inputs.iter().map(|t| t.shape.clone()).collect();
        // Asked each call, so that the cache knows what is in use.
        let plan = self.model.plan(&shapes)?;
        if !self
            .states
            .peek(&shapes)
            .is_some_and(|state| Arc::ptr_eq(state.plan(), &plan))
        {
            let state = plan
                .spawn()
                .map_err(|e| BackendError::Execution(format!("{e:#}")))?;
            self.states.put(shapes.clone(), state);
            // A state holds its plan: those of plans the cache let go would keep them.
            let stale: Vec<InputShapes> = self
                .states
                .iter()
                .filter(|(shapes, state)| !self.model.plans.holds(shapes, state.plan()))
                .map(|(shapes, _)| shapes.clone())
                .collect();
            for shapes in stale {
                self.states.pop(&shapes);
            }
        }
        let state = self.states.get_mut(&shapes).expect("put above");
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

    /// Each row through the one-row plan, the outputs joined back into `rows` rows.
    fn run_rows(
        &mut self,
        inputs: &[WharfTensor],
        rows: usize,
    ) -> Result<Vec<WharfTensor>, BackendError> {
        let ones = vec![1; rows];
        let split: Vec<Vec<WharfTensor>> = inputs
            .iter()
            .map(|t| tensor::split_rows(t.clone(), &ones).map_err(BackendError::BadInput))
            .collect::<Result<_, _>>()?;
        let mut joined: Vec<Vec<WharfTensor>> = Vec::new();
        for row in 0..rows {
            let one: Vec<WharfTensor> = split.iter().map(|rows| rows[row].clone()).collect();
            let outputs = self.run_whole(&one)?;
            if let Some(bad) = outputs.iter().find(|t| t.shape.first() != Some(&1)) {
                return Err(BackendError::BadOutput(format!(
                    "output '{}' has shape {} for one row; a batched model's outputs lead with the row",
                    bad.name,
                    tensor::shape_string(&bad.shape)
                )));
            }
            joined.resize_with(outputs.len(), Vec::new);
            for (parts, output) in joined.iter_mut().zip(outputs) {
                parts.push(output);
            }
        }
        joined.into_iter().map(|parts| join_rows(&parts)).collect()
    }

    /// Times the call both ways (each after a first run that builds its plan and state)
    /// and keeps the faster for every later multi-row call of the model. Ties go to the
    /// whole batch, which has always been tract's way.
    fn choose_rows(
        &mut self,
        inputs: &[WharfTensor],
        rows: usize,
    ) -> Result<Vec<WharfTensor>, BackendError> {
        let whole = self.run_whole(inputs)?;
        let whole_time = fastest(|| self.run_whole(inputs))?;
        let one_by_one = match self.run_rows(inputs, rows) {
            // Rows that do not join back into the batch's shapes: the model is not
            // row-independent after all, whatever its config says.
            Ok(outputs)
                if outputs
                    .iter()
                    .zip(&whole)
                    .all(|(a, b)| a.shape == b.shape && a.datatype == b.datatype) =>
            {
                Some(fastest(|| self.run_rows(inputs, rows))?)
            }
            _ => None,
        };
        let choice = match one_by_one {
            Some(time) if time < whole_time => Rows::OneByOne,
            _ => Rows::Whole,
        };
        let choice = *self.model.rows.get_or_init(|| choice);
        // One by one, this row count's plan is not asked for again; whole, the one-row
        // plan still serves calls of one row.
        if choice == Rows::OneByOne {
            let batch: InputShapes = inputs.iter().map(|t| t.shape.clone()).collect();
            self.states.pop(&batch);
            self.model.plans.forget(&batch);
        }
        tracing::debug!(
            rows,
            whole_us = whole_time.as_micros() as u64,
            one_by_one_us = one_by_one.map(|t| t.as_micros() as u64),
            choice = ?choice,
            "tract: how batched calls run"
        );
        Ok(whole)
    }
}

/// The fastest of three runs, or of fewer where one is long enough (50 ms) that a
/// scheduler's hiccup cannot decide the comparison.
fn fastest(
    mut call: impl FnMut() -> Result<Vec<WharfTensor>, BackendError>,
) -> Result<Duration, BackendError> {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        call()?;
        best = best.min(started.elapsed());
        if best >= Duration::from_millis(50) {
            break;
        }
    }
    Ok(best)
}

/// One-row outputs stacked back into one tensor; they must agree past the row.
fn join_rows(parts: &[WharfTensor]) -> Result<WharfTensor, BackendError> {
    let first = &parts[0];
    if let Some(odd) = parts
        .iter()
        .find(|p| p.shape[1..] != first.shape[1..] || p.datatype != first.datatype)
    {
        return Err(BackendError::BadOutput(format!(
            "output '{}' has shape {} for one row and {} for another",
            first.name,
            tensor::shape_string(&first.shape),
            tensor::shape_string(&odd.shape)
        )));
    }
    Ok(tensor::concat_rows(&parts.iter().collect::<Vec<_>>()))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier() -> Arc<TractModel> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ppocr_cls/1/model.onnx");
        TractModel::load(&path).expect("the shipped classifier loads")
    }

    fn batched(model: &Arc<TractModel>) {
        model.plan_calls(&CallPlan {
            batched: true,
            ..CallPlan::default()
        });
    }

    fn floats(t: &WharfTensor) -> Vec<f32> {
        match &t.data {
            TensorData::Fixed(bytes) => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            TensorData::Bytes(_) => panic!("not a float tensor"),
        }
    }

    fn planned(model: &TractModel) -> Vec<InputShapes> {
        let mut shapes = model.plans.contents().0;
        shapes.sort();
        shapes
    }

    /// Each row alone, through a fresh instance that runs whole batches only.
    fn rows_alone(model: &Arc<TractModel>, batch: &WharfTensor, rows: usize) -> Vec<f32> {
        let mut alone = Arc::clone(model).new_instance().unwrap();
        let ones = vec![1; rows];
        tensor::split_rows(batch.clone(), &ones)
            .unwrap()
            .into_iter()
            .flat_map(|row| floats(&alone.run(&[row]).unwrap()[0]))
            .collect()
    }

    #[test]
    fn rows_one_by_one_answer_as_each_row_alone_and_keep_one_plan() {
        let model = classifier();
        batched(&model);
        model.rows.set(Rows::OneByOne).unwrap();
        let batch = WharfTensor::noise("x", vec![3, 3, 48, 192], 7);
        let mut instance = Arc::clone(&model).new_instance().unwrap();
        let outputs = instance.run(std::slice::from_ref(&batch)).unwrap();
        assert_eq!(outputs[0].shape, vec![3, 2]);
        assert_eq!(floats(&outputs[0]), rows_alone(&model, &batch, 3));
        assert_eq!(planned(&model), vec![vec![vec![1, 3, 48, 192]]]);
    }

    fn faulty(name: &str) -> Arc<TractModel> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/faulty/{name}.onnx"));
        let model = TractModel::load(&path).expect("the test model loads");
        batched(&model);
        model.rows.set(Rows::OneByOne).unwrap();
        model
    }

    fn int64s(name: &str, shape: Vec<usize>, values: &[i64]) -> WharfTensor {
        WharfTensor {
            name: name.into(),
            datatype: DataType::Int64,
            shape,
            data: TensorData::Fixed(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }

    #[test]
    fn one_by_one_an_output_not_led_by_the_row_is_a_bad_output_naming_it() {
        // A row of 4 stays one row: served. A row of 8 folds into two: refused by name.
        let model = faulty("fold_rows");
        let mut instance = Arc::clone(&model).new_instance().unwrap();
        let fours = WharfTensor::noise("x", vec![2, 4], 1);
        assert_eq!(instance.run(&[fours]).unwrap()[0].shape, vec![2, 4]);
        let eights = WharfTensor::noise("x", vec![2, 8], 1);
        match instance.run(&[eights]) {
            Err(BackendError::BadOutput(message)) => assert_eq!(
                message,
                "output 'y' has shape [2, 4] for one row; a batched model's outputs lead with the row"
            ),
            other => panic!("expected BadOutput, got {other:?}"),
        }
    }

    #[test]
    fn a_panic_in_one_row_leaves_the_model_serving() {
        // gather_index's tract panics on an index past its table's 4 rows; the worker
        // catches it and builds a fresh instance, which must find the model whole.
        let model = faulty("gather_index");
        let mut instance = Arc::clone(&model).new_instance().unwrap();
        let bad = int64s("index", vec![2, 1], &[0, 9]);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = instance.run(&[bad]);
        }));
        assert!(panicked.is_err(), "tract panics on the second row");
        let mut fresh = Arc::clone(&model).new_instance().unwrap();
        let good = int64s("index", vec![2, 1], &[3, 1]);
        let answer = fresh.run(&[good]).unwrap();
        assert_eq!(answer[0].shape, vec![2, 1, 3]);
        assert_eq!(floats(&answer[0]), vec![9.0, 10.0, 11.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn the_first_multi_row_call_chooses_once_and_one_by_one_forgets_the_batch_plan() {
        let model = classifier();
        batched(&model);
        let batch = WharfTensor::noise("x", vec![2, 3, 48, 192], 3);
        let mut instance = Arc::clone(&model).new_instance().unwrap();
        let first = instance.run(std::slice::from_ref(&batch)).unwrap();
        let choice = *model
            .rows
            .get()
            .expect("chosen on the first multi-row call");
        let kept = match choice {
            Rows::OneByOne => vec![vec![vec![1, 3, 48, 192]]],
            Rows::Whole => vec![vec![vec![1, 3, 48, 192]], vec![vec![2, 3, 48, 192]]],
        };
        assert_eq!(planned(&model), kept, "{choice:?}");
        // Whichever way, the rows' answers are those of each row alone (to float noise:
        // a batch may sum in another order).
        let alone = rows_alone(&model, &batch, 2);
        for (a, b) in floats(&first[0]).iter().zip(&alone) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn an_instance_lets_go_the_states_of_plans_the_cache_let_go() {
        let mut model = classifier();
        // Room for the newest plan only.
        Arc::get_mut(&mut model).unwrap().plans = Plans::new(16, 1);
        let mut instance = TractInstance {
            model: Arc::clone(&model),
            states: LruCache::new(STATE_CACHE_CAPACITY),
        };
        for rows in [1, 2, 1] {
            let batch = WharfTensor::noise("x", vec![rows, 3, 48, 192], 1);
            assert_eq!(instance.run(&[batch]).unwrap()[0].shape, vec![rows, 2]);
            let only = vec![vec![rows, 3, 48, 192]];
            assert_eq!(planned(&model), vec![only.clone()]);
            let states: Vec<_> = instance.states.iter().map(|(k, _)| k.clone()).collect();
            assert_eq!(states, vec![only], "a state kept its plan alive");
        }
    }

    #[test]
    fn an_unbatched_model_runs_whole_and_chooses_nothing() {
        let model = classifier();
        let batch = WharfTensor::noise("x", vec![2, 3, 48, 192], 5);
        let mut instance = Arc::clone(&model).new_instance().unwrap();
        assert_eq!(instance.run(&[batch]).unwrap()[0].shape, vec![2, 2]);
        assert_eq!(model.rows.get(), None);
        assert_eq!(planned(&model), vec![vec![vec![2, 3, 48, 192]]]);
    }
}
