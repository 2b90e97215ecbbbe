//! Triton's auto-complete for ONNX models: what a config leaves out, filled from the graph
//! as Triton's onnxruntime backend fills it, so that a folder with only `model.onnx` serves
//! as it would under Triton. `--disable-auto-complete-config` turns it off: the config must
//! then declare every input and output.

use super::{
    config::{DynamicBatching, ModelConfig},
    spec::{batchable, DEFAULT_MAX_BATCH_SIZE},
};
use crate::backend::Signature;

/// `config` completed against `graph`. As in Triton, a config that lists both inputs and
/// outputs is taken as it is; otherwise `max_batch_size` (when unset) becomes 4 where
/// every graph input and output has an open leading dimension, else 0, and a batching
/// model without a scheduler gets dynamic batching with `preferred_batch_size [max]`.
/// The tensors themselves are filled from the graph when the spec is resolved.
pub fn complete(
    config: &ModelConfig,
    graph: &Signature,
    enabled: bool,
) -> Result<ModelConfig, String> {
    let mut completed = config.clone();
    if !enabled {
        for (side, key) in [(&config.input, "input"), (&config.output, "output")] {
            if side.is_none() {
                return Err(format!(
                    "auto-complete is off (--disable-auto-complete-config), so the config \
                     must list every {key}; it lists none"
                ));
            }
        }
        completed.max_batch_size.get_or_insert(0);
        return Ok(completed);
    }
    if config.input.is_some() && config.output.is_some() {
        return Ok(completed);
    }
    let max = *completed.max_batch_size.get_or_insert(if batchable(graph) {
        DEFAULT_MAX_BATCH_SIZE
    } else {
        0
    });
    if max > 1 && completed.dynamic_batching.is_none() {
        completed.dynamic_batching = Some(DynamicBatching {
            preferred_batch_size: vec![max],
            ..DynamicBatching::default()
        });
    }
    Ok(completed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backend::TensorSignature, tensor::DataType};

    fn graph(leading: i64) -> Signature {
        let t = |name: &str| TensorSignature {
            name: name.into(),
            datatype: Some(DataType::Int32),
            dims: Some(vec![leading, 16]),
        };
        Signature {
            inputs: vec![t("INPUT0")],
            outputs: vec![t("OUTPUT0")],
        }
    }

    #[test]
    fn a_bare_batchable_model_batches_four_dynamically() {
        let c = complete(&ModelConfig::default(), &graph(-1), true).unwrap();
        assert_eq!(c.max_batch_size, Some(4));
        assert_eq!(c.dynamic_batching.unwrap().preferred_batch_size, vec![4]);
        let fixed = complete(&ModelConfig::default(), &graph(1), true).unwrap();
        assert_eq!(fixed.max_batch_size, Some(0));
        assert!(fixed.dynamic_batching.is_none());
    }

    #[test]
    fn a_full_config_is_left_as_it_is_and_off_means_declared() {
        let full = ModelConfig::from_yaml(
            "input: [{name: INPUT0}]\noutput: [{name: OUTPUT0}]\nmax_batch_size: 2",
        )
        .unwrap();
        let c = complete(&full, &graph(-1), true).unwrap();
        assert!(c.dynamic_batching.is_none());
        let err = complete(&ModelConfig::default(), &graph(-1), false).unwrap_err();
        assert!(err.contains("must list every input"), "{err}");
        let off = complete(&full, &graph(-1), false).unwrap();
        assert_eq!(off.max_batch_size, Some(2));
    }
}
