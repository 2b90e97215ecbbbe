//! Warms a model before it is called READY: builds and runs the plan of each shape it is
//! known to be called with, so the first real request does not pay for compilation.

use std::sync::Arc;

use bytes::Bytes;

use super::{
    config::{ModelConfig, Warmup},
    spec::ModelSpec,
};
use crate::{
    backend::Model,
    tensor::{DataType, Tensor, TensorData},
};

/// Runs the warmup samples; returns how many distinct samples ran.
pub fn run(
    model: &Arc<dyn Model>,
    spec: &ModelSpec,
    config: &ModelConfig,
) -> Result<usize, String> {
    let samples = samples(spec, config)?;
    let mut instance = Arc::clone(model).new_instance();
    for (name, inputs, count) in &samples {
        for _ in 0..*count {
            instance
                .run(inputs)
                .map_err(|e| format!("warmup sample '{name}' failed: {e}"))?;
        }
    }
    Ok(samples.len())
}

type Sample = (String, Vec<Tensor>, u32);

fn samples(spec: &ModelSpec, config: &ModelConfig) -> Result<Vec<Sample>, String> {
    match &config.model_warmup {
        Some(Warmup::Enabled(false)) => Ok(Vec::new()),
        // By default warm batch 1 of the one shape a fully-specified model takes.
        None | Some(Warmup::Enabled(true)) => {
            let concrete = spec.inputs.iter().all(|i| i.dims.iter().all(|d| *d > 0));
            if !concrete {
                return Ok(Vec::new());
            }
            let inputs = spec
                .inputs
                .iter()
                .map(|i| {
                    let shape = spec.full_dims(i, 1).iter().map(|d| *d as usize).collect();
                    filled(&i.name, i.datatype, shape, false)
                })
                .collect();
            Ok(vec![("default".to_owned(), inputs, 1)])
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
                        let mut shape: Vec<usize> =
                            given.dims.iter().map(|d| *d as usize).collect();
                        if spec.max_batch_size > 0 {
                            shape.insert(0, sample.batch_size.get() as usize);
                        }
                        Ok(filled(&i.name, i.datatype, shape, given.random_data))
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
                Ok((sample.name.clone(), inputs, sample.count.get()))
            })
            .collect(),
    }
}

/// Zeros, or for float types a fixed pseudo-random pattern in [0, 1) (`random_data`).
fn filled(name: &str, datatype: DataType, shape: Vec<usize>, random: bool) -> Tensor {
    let count: usize = shape.iter().product();
    let data = match datatype.element_size() {
        None => TensorData::Bytes(vec![Bytes::new(); count]),
        Some(size) => {
            let mut bytes = vec![0u8; count * size];
            if random && matches!(datatype, DataType::Fp32) {
                // xorshift: reproducible, no dependency, good enough to exercise kernels.
                let mut state = 0x9E37_79B9u32;
                for chunk in bytes.chunks_exact_mut(4) {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    chunk.copy_from_slice(
                        &((state >> 8) as f32 / (1u32 << 24) as f32).to_le_bytes(),
                    );
                }
            }
            TensorData::Fixed(bytes.into())
        }
    };
    Tensor {
        name: name.to_owned(),
        datatype,
        shape,
        data,
    }
}
