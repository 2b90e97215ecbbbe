//! The resolved model spec: the config completed from the ONNX graph and checked against
//! it, in the shape requests are validated against.

use crate::{
    backend::{Signature, TensorSignature},
    repository::config::{ModelConfig, TensorConfig},
    tensor::{shape_string, DataType},
};

/// `max_batch_size` for a model whose graph has an open first dimension and whose config
/// does not say: Triton's `default-max-batch-size`, so that a model batches as it would
/// under Triton.
pub const DEFAULT_MAX_BATCH_SIZE: u32 = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    /// Without the batch dimension when the model batches; -1 for any size.
    pub dims: Vec<i64>,
    /// The graph's own shape where the config's `reshape` says it differs from `dims`
    /// (the wire's), batch dimension excluded.
    pub reshape: Option<Vec<i64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// 0: no batch dimension; otherwise requests carry `[b, dims..]` with 1 <= b <= this.
    pub max_batch_size: u32,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl ModelSpec {
    pub fn resolve(config: &ModelConfig, graph: &Signature) -> Result<ModelSpec, String> {
        let max_batch_size = match config.max_batch_size {
            Some(m) => m,
            None if batchable(graph) => DEFAULT_MAX_BATCH_SIZE,
            None => 0,
        };
        let inputs = resolve_side(
            "input",
            config.input.as_deref(),
            &graph.inputs,
            max_batch_size,
        )?;
        let outputs = resolve_side(
            "output",
            config.output.as_deref(),
            &graph.outputs,
            max_batch_size,
        )?;
        Ok(ModelSpec {
            max_batch_size,
            inputs,
            outputs,
        })
    }

    /// The spec a model without a file declares in full in its config (an ensemble):
    /// `max_batch_size` 0 unless given, every input and output with its type and dims.
    pub fn declared(config: &ModelConfig) -> Result<ModelSpec, String> {
        let max_batch_size = config.max_batch_size.unwrap_or(0);
        let side = |list: &Option<Vec<TensorConfig>>| -> Vec<TensorSignature> {
            list.iter()
                .flatten()
                .map(|t| TensorSignature {
                    name: t.name.clone(),
                    datatype: t.data_type,
                    dims: t.dims.as_ref().map(|dims| {
                        (max_batch_size > 0)
                            .then_some(-1)
                            .into_iter()
                            .chain(dims.iter().copied())
                            .collect()
                    }),
                })
                .collect()
        };
        let graph = Signature {
            inputs: side(&config.input),
            outputs: side(&config.output),
        };
        let config = ModelConfig {
            max_batch_size: Some(max_batch_size),
            ..config.clone()
        };
        ModelSpec::resolve(&config, &graph)
    }

    /// The full shape a tensor takes at batch size `batch` (ignored when unbatched).
    pub fn full_dims(&self, spec: &TensorSpec, batch: i64) -> Vec<i64> {
        if self.max_batch_size > 0 {
            std::iter::once(batch)
                .chain(spec.dims.iter().copied())
                .collect()
        } else {
            spec.dims.clone()
        }
    }
}

/// Every graph input and output has an open (or -1) leading dimension.
pub fn batchable(graph: &Signature) -> bool {
    graph
        .inputs
        .iter()
        .chain(&graph.outputs)
        .all(|t| matches!(t.dims.as_deref(), Some([-1, ..])))
}

fn resolve_side(
    key: &str,
    config: Option<&[TensorConfig]>,
    graph: &[TensorSignature],
    max_batch_size: u32,
) -> Result<Vec<TensorSpec>, String> {
    let names: Vec<&str> = graph.iter().map(|t| t.name.as_str()).collect();
    if let Some(unknown) = config
        .into_iter()
        .flatten()
        .find(|c| !names.contains(&c.name.as_str()))
    {
        return Err(format!(
            "config {key} '{}' is not an {key} of the graph; the graph's {key}s are {}",
            unknown.name,
            names.join(", ")
        ));
    }
    graph
        .iter()
        .map(|g| {
            let configured = config.into_iter().flatten().find(|c| c.name == g.name);
            resolve_tensor(key, configured, g, max_batch_size)
        })
        .collect()
}

fn resolve_tensor(
    key: &str,
    configured: Option<&TensorConfig>,
    graph: &TensorSignature,
    max_batch_size: u32,
) -> Result<TensorSpec, String> {
    let name = &graph.name;
    let datatype = match (configured.and_then(|c| c.data_type), graph.datatype) {
        (Some(c), Some(g)) if c != g => {
            return Err(format!(
                "{key} '{name}': config says {} but the graph holds {}",
                c.config_name(),
                g.config_name()
            ))
        }
        (Some(dt), _) | (None, Some(dt)) => dt,
        (None, None) => {
            return Err(format!(
                "{key} '{name}': the graph leaves its type open; set data_type in config.yaml"
            ))
        }
    };
    // The graph's dims without the batch dim, when it has one.
    let graph_dims = match (&graph.dims, max_batch_size) {
        (Some(d), 0) => Some(d.clone()),
        (Some(d), _) => match d.split_first() {
            Some((-1, rest)) => Some(rest.to_vec()),
            Some((first, _)) => {
                return Err(format!(
                    "{key} '{name}': max_batch_size is {max_batch_size} but the graph fixes the first dimension to {first}; set max_batch_size: 0"
                ))
            }
            None => {
                return Err(format!(
                    "{key} '{name}': max_batch_size is {max_batch_size} but the graph gives it no dimensions to batch along"
                ))
            }
        },
        (None, _) => None,
    };
    let reshape = configured
        .and_then(|c| c.reshape.as_ref())
        .map(|r| r.shape.clone());
    if let Some(model) = &reshape {
        // The graph is checked against the model's shape; requests against `dims`.
        let Some(dims) = configured.and_then(|c| c.dims.clone()) else {
            return Err(format!(
                "{key} '{name}': reshape needs dims, the shape on the wire"
            ));
        };
        if let Some(g) = &graph_dims {
            if !agree(model, g) {
                return Err(format!(
                    "{key} '{name}': reshape {} disagrees with the graph's {}",
                    shape_string(model),
                    shape_string(g),
                ));
            }
        }
        return Ok(TensorSpec {
            name: name.clone(),
            datatype,
            dims,
            reshape,
        });
    }
    let dims = match (configured.and_then(|c| c.dims.clone()), graph_dims) {
        (Some(c), Some(g)) => {
            if !agree(&c, &g) {
                return Err(format!(
                    "{key} '{name}': config dims {} disagree with the graph's {}{}",
                    shape_string(&c),
                    shape_string(&g),
                    if max_batch_size > 0 {
                        " (batch dimension excluded)"
                    } else {
                        ""
                    }
                ));
            }
            c
        }
        (Some(d), None) | (None, Some(d)) => d,
        (None, None) => {
            return Err(format!(
                "{key} '{name}': the graph leaves its rank open; set dims in config.yaml"
            ))
        }
    };
    Ok(TensorSpec {
        name: name.clone(),
        datatype,
        dims,
        reshape: None,
    })
}

/// Whether a configured shape fits the graph's, where the graph's -1 takes any size.
fn agree(config: &[i64], graph: &[i64]) -> bool {
    config.len() == graph.len() && config.iter().zip(graph).all(|(c, g)| *g == -1 || c == g)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(name: &str, dt: DataType, dims: &[i64]) -> TensorSignature {
        TensorSignature {
            name: name.into(),
            datatype: Some(dt),
            dims: Some(dims.to_vec()),
        }
    }

    fn graph() -> Signature {
        Signature {
            inputs: vec![sig("x", DataType::Fp32, &[-1, 3, -1, -1])],
            outputs: vec![sig("y", DataType::Fp32, &[-1, 2])],
        }
    }

    #[test]
    fn fills_from_the_graph_and_batches_open_leading_dims() {
        let spec = ModelSpec::resolve(&ModelConfig::default(), &graph()).unwrap();
        assert_eq!(spec.max_batch_size, DEFAULT_MAX_BATCH_SIZE);
        assert_eq!(spec.inputs[0].dims, vec![3, -1, -1]);
        assert_eq!(spec.outputs[0].dims, vec![2]);
    }

    #[test]
    fn config_narrows_open_dims_and_conflicts_are_named() {
        let c = ModelConfig::from_yaml("input: [{name: x, dims: [3, 48, 192]}]").unwrap();
        assert_eq!(
            ModelSpec::resolve(&c, &graph()).unwrap().inputs[0].dims,
            vec![3, 48, 192]
        );
        let c = ModelConfig::from_yaml("input: [{name: x, dims: [4, 48, 192]}]").unwrap();
        let err = ModelSpec::resolve(&c, &graph()).unwrap_err();
        assert!(
            err.contains("config dims [4, 48, 192] disagree with the graph's [3, -1, -1]"),
            "{err}"
        );
        let c = ModelConfig::from_yaml("input: [{name: z}]").unwrap();
        assert!(ModelSpec::resolve(&c, &graph())
            .unwrap_err()
            .contains("'z' is not an input"));
        let c = ModelConfig::from_yaml("input: [{name: x, data_type: TYPE_INT64}]").unwrap();
        assert!(ModelSpec::resolve(&c, &graph())
            .unwrap_err()
            .contains("graph holds TYPE_FP32"));
    }

    #[test]
    fn unbatched_models_keep_full_dims() {
        let c = ModelConfig::from_yaml("max_batch_size: 0").unwrap();
        let spec = ModelSpec::resolve(&c, &graph()).unwrap();
        assert_eq!(spec.inputs[0].dims, vec![-1, 3, -1, -1]);
        let fixed = Signature {
            inputs: vec![sig("x", DataType::Fp32, &[1, 3])],
            outputs: vec![],
        };
        assert_eq!(
            ModelSpec::resolve(&ModelConfig::default(), &fixed)
                .unwrap()
                .max_batch_size,
            0
        );
        let c = ModelConfig::from_yaml("max_batch_size: 4").unwrap();
        assert!(ModelSpec::resolve(&c, &fixed)
            .unwrap_err()
            .contains("fixes the first dimension to 1"));
    }
}
