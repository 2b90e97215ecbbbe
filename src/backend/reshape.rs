//! Triton's `reshape`: a model whose tensors take another shape than the wire's (a
//! `[3, 224, 224]` image fed to a `[1, 3, 224, 224]` graph input), wrapped so that the
//! engine sees its own shapes and the rest of wharf only the wire's. Only the shape
//! changes; the data is shared, never copied.

use std::sync::Arc;

use super::{BackendError, CallPlan, EngineTraits, Instance, Model, Signature};
use crate::tensor::{shape_string, Tensor};

/// One tensor's two shapes, batch dimension excluded; -1 is any size, told by the
/// element count.
#[derive(Debug, Clone, PartialEq)]
pub struct Shapes {
    pub wire: Vec<i64>,
    pub model: Vec<i64>,
}

pub struct Reshaped {
    inner: Arc<dyn Model>,
    /// Per input and per output, in the model's order: None where the shapes agree.
    inputs: Vec<Option<Shapes>>,
    outputs: Vec<Option<Shapes>>,
    /// Whether tensors carry a leading batch dimension, kept as it is.
    batched: bool,
}

impl Reshaped {
    pub fn wrap(
        inner: Arc<dyn Model>,
        inputs: Vec<Option<Shapes>>,
        outputs: Vec<Option<Shapes>>,
        batched: bool,
    ) -> Arc<dyn Model> {
        if inputs.iter().chain(&outputs).all(Option::is_none) {
            return inner;
        }
        Arc::new(Reshaped {
            inner,
            inputs,
            outputs,
            batched,
        })
    }
}

impl Model for Reshaped {
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn traits(&self) -> EngineTraits {
        self.inner.traits()
    }

    fn plan_calls(&self, calls: &CallPlan) {
        self.inner.plan_calls(calls)
    }

    fn new_instance(self: Arc<Self>) -> Result<Box<dyn Instance>, BackendError> {
        let inner = Arc::clone(&self.inner).new_instance()?;
        Ok(Box::new(ReshapedInstance { model: self, inner }))
    }
}

struct ReshapedInstance {
    model: Arc<Reshaped>,
    inner: Box<dyn Instance>,
}

impl Instance for ReshapedInstance {
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let batched = self.model.batched;
        let reshaped: Vec<Tensor> = inputs
            .iter()
            .zip(&self.model.inputs)
            .map(|(t, shapes)| match shapes {
                Some(shapes) => refit(t, &shapes.model, batched)
                    .map_err(|e| BackendError::BadInput(format!("input '{}': {e}", t.name))),
                None => Ok(t.clone()),
            })
            .collect::<Result<_, _>>()?;
        let outputs = self.inner.run(&reshaped)?;
        outputs
            .into_iter()
            .zip(self.model.outputs.iter().chain(std::iter::repeat(&None)))
            .map(|(t, shapes)| match shapes {
                Some(shapes) => refit(&t, &shapes.wire, batched)
                    .map_err(|e| BackendError::BadOutput(format!("output '{}': {e}", t.name))),
                None => Ok(t),
            })
            .collect()
    }

    fn peak_bytes(&self) -> Option<u64> {
        self.inner.peak_bytes()
    }
}

/// `t` with its shape (past the batch dimension where `batched`) set to `dims`, whose one
/// -1 (if any) takes what the element count leaves.
fn refit(t: &Tensor, dims: &[i64], batched: bool) -> Result<Tensor, String> {
    let total: usize = t.shape.iter().product();
    let mut shape: Vec<usize> = Vec::with_capacity(dims.len() + 1);
    let rows = if batched {
        let rows = t.shape.first().copied().unwrap_or(1);
        shape.push(rows);
        rows
    } else {
        1
    };
    let known: usize = dims
        .iter()
        .filter(|d| **d >= 0)
        .map(|d| *d as usize)
        .product();
    let per_row = total.checked_div(rows).unwrap_or(0);
    let open = dims.iter().filter(|d| **d < 0).count();
    let fill = match open {
        0 if known == per_row => 0,
        1 if known > 0 && per_row.is_multiple_of(known) => per_row / known,
        _ => {
            return Err(format!(
                "shape [{}] holds {per_row} elements a row, which reshape {} cannot hold",
                t.shape
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                shape_string(dims)
            ))
        }
    };
    shape.extend(dims.iter().map(|d| if *d < 0 { fill } else { *d as usize }));
    Ok(Tensor { shape, ..t.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DataType;

    #[test]
    fn shapes_change_and_data_stays() {
        let t = Tensor::zeros("x", DataType::Fp32, vec![3, 2, 2]);
        let r = refit(&t, &[1, 3, 4], false).unwrap();
        assert_eq!(r.shape, vec![1, 3, 4]);
        assert_eq!(r.data, t.data);
        let batched = Tensor::zeros("x", DataType::Fp32, vec![2, 6]);
        assert_eq!(
            refit(&batched, &[-1, 3], true).unwrap().shape,
            vec![2, 2, 3]
        );
        assert!(refit(&batched, &[], true)
            .unwrap_err()
            .contains("6 elements"));
        let scalar_rows = Tensor::zeros("x", DataType::Fp32, vec![4, 1]);
        assert_eq!(refit(&scalar_rows, &[], true).unwrap().shape, vec![4]);
    }
}
