//! Built-in processing steps for OCR pipelines, written in Rust: image decoding, DB
//! post-processing, text-line crops for the classifier and the recogniser, and CTC
//! decoding. Each is a model a config names with a `backend:` of its own, with no model
//! file, so ensembles chain them with the detector and recogniser models (PP-OCR's
//! defaults, from rapidocr-onnxruntime 1.4.4's config.yaml, each overridable).

mod crop;
mod ctc;
mod db;
mod decode;
mod geometry;
mod jpeg;
mod min_area_rect;
mod params;
mod resample;

use std::{collections::BTreeMap, path::Path, sync::Arc};

use bytes::Bytes;

use super::{BackendError, EngineTraits, Instance, Model, Signature, TensorSignature};
use crate::tensor::{le_chunks, DataType, Tensor, TensorData};
use params::Params;

/// A processing step: what it takes and gives, and the work on one call's inputs.
trait Step: Send + Sync + 'static {
    fn signature(&self) -> &Signature;
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError>;
}

/// A step as the workers see a model: every instance shares it (it holds no run state).
struct Processing<S: Step>(Arc<S>);

impl<S: Step> Model for Processing<S> {
    fn signature(&self) -> &Signature {
        self.0.signature()
    }

    fn traits(&self) -> EngineTraits {
        EngineTraits {
            warms: false,
            ..EngineTraits::default()
        }
    }

    fn new_instance(self: Arc<Self>) -> Result<Box<dyn Instance>, BackendError> {
        Ok(Box::new(StepInstance(Arc::clone(&self.0))))
    }
}

struct StepInstance<S: Step>(Arc<S>);

impl<S: Step> Instance for StepInstance<S> {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        self.0.run(inputs)
    }
}

/// The built-in steps, as a config's `backend:` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    ImageDecode,
    DbPostprocess,
    TextCrop,
    TextLines,
    CtcDecode,
}

/// Builds the step `kind` names from its `parameters` (key → value; unknown keys are an
/// error); `model_dir` is the model's folder, for files a step reads (the CTC dictionary).
pub fn open(
    kind: StepKind,
    parameters: &BTreeMap<String, String>,
    model_dir: &Path,
) -> Result<Arc<dyn Model>, String> {
    let mut params = Params::new(parameters);
    let model: Arc<dyn Model> = match kind {
        StepKind::ImageDecode => {
            Arc::new(Processing(Arc::new(decode::ImageDecode::new(&mut params)?)))
        }
        StepKind::DbPostprocess => {
            Arc::new(Processing(Arc::new(db::DbPostprocess::new(&mut params)?)))
        }
        StepKind::TextCrop => Arc::new(Processing(Arc::new(crop::TextCrop::new(&mut params)?))),
        StepKind::TextLines => Arc::new(Processing(Arc::new(crop::TextLines::new(&mut params)?))),
        StepKind::CtcDecode => Arc::new(Processing(Arc::new(ctc::CtcDecode::new(
            &mut params,
            model_dir,
        )?))),
    };
    params.finish()?;
    Ok(model)
}

fn tensor(name: &str, datatype: DataType, dims: &[i64]) -> TensorSignature {
    TensorSignature {
        name: name.into(),
        datatype: Some(datatype),
        dims: Some(dims.to_vec()),
    }
}

fn f32_tensor(name: &str, shape: Vec<usize>, values: &[f32]) -> Tensor {
    f32_tensor_from(name, shape, values.iter().copied())
}

/// Values written straight as the tensor's bytes, into a buffer sized once from `shape`:
/// collected from `flat_map` it would grow by doubling, a page's detector input (15 MB)
/// reallocated and copied on the way.
fn f32_tensor_from(name: &str, shape: Vec<usize>, values: impl IntoIterator<Item = f32>) -> Tensor {
    let mut bytes =
        Vec::with_capacity(shape.iter().product::<usize>() * std::mem::size_of::<f32>());
    for value in values {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    Tensor {
        name: name.into(),
        datatype: DataType::Fp32,
        shape,
        data: TensorData::Fixed(bytes.into()),
    }
}

fn i32_tensor(name: &str, values: &[i32]) -> Tensor {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor {
        name: name.into(),
        datatype: DataType::Int32,
        shape: vec![values.len()],
        data: TensorData::Fixed(bytes.into()),
    }
}

fn u8_tensor(name: &str, shape: Vec<usize>, values: Vec<u8>) -> Tensor {
    Tensor {
        name: name.into(),
        datatype: DataType::Uint8,
        shape,
        data: TensorData::Fixed(values.into()),
    }
}

fn bytes_tensor(name: &str, items: Vec<Bytes>) -> Tensor {
    Tensor {
        name: name.into(),
        datatype: DataType::Bytes,
        shape: vec![items.len()],
        data: TensorData::Bytes(items),
    }
}

/// A fixed-size input's raw bytes (the workers hand steps validated tensors).
fn raw(t: &Tensor) -> &[u8] {
    match &t.data {
        TensorData::Fixed(b) => b,
        TensorData::Bytes(_) => &[],
    }
}

fn f32s(t: &Tensor) -> Vec<f32> {
    le_chunks::<4>(raw(t)).map(f32::from_le_bytes).collect()
}

fn i32s(t: &Tensor) -> Vec<i32> {
    le_chunks::<4>(raw(t)).map(i32::from_le_bytes).collect()
}
