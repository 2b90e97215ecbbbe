//! Checks a decoded request against its model's spec before anything is queued, and puts
//! the inputs into the model's order. Every message names the input and what was expected.

use tokio::time::Instant;

use crate::{
    error::InferError,
    job::{ShapeKey, ValidRequest},
    repository::{spec::ModelSpec, EngineRunner, ServedModel},
    request::InferRequest,
    tensor::{shape_string, Tensor},
};

/// The one way into a model's queue: checks the outputs asked for, the inputs (taken out of
/// `request`), the rows against what a call may carry, the priority, and resolves the
/// deadline from the queue timeout and the caller's own.
pub fn admit(
    model: &ServedModel,
    engine: &EngineRunner,
    request: &mut InferRequest,
    arrived: Instant,
) -> Result<ValidRequest, InferError> {
    let (inputs, rows) = check(model, request)?;
    let policy = engine.scheduler.policy();
    if rows > policy.max_rows && model.spec.max_batch_size > 0 {
        return Err(InferError::invalid(format!(
            "batch size {rows} does not fit model '{}': its memory budget allows {} rows per call",
            model.name, policy.max_rows
        )));
    }
    let priority = policy
        .priority(request.priority)
        .map_err(InferError::invalid)?;
    let timeout = match request.timeout {
        Some(t) if policy.allow_timeout_override || policy.default_timeout.is_none() => Some(t),
        _ => policy.default_timeout,
    };
    // A wait too long to represent is no deadline at all (a caller may send any
    // grpc-timeout).
    let deadline = [timeout, request.deadline]
        .into_iter()
        .flatten()
        .min()
        .and_then(|d| arrived.checked_add(d));
    Ok(ValidRequest {
        key: ShapeKey::of(&inputs),
        inputs,
        rows,
        priority,
        arrived,
        deadline,
        protocol: request.protocol,
        trace: request.trace.take(),
    })
}

/// The checks every model's requests pass, engine or ensemble: the outputs asked for and
/// the inputs (taken out of `request`), returned in the model's order with their rows.
pub fn check(
    model: &ServedModel,
    request: &mut InferRequest,
) -> Result<(Vec<Tensor>, usize), InferError> {
    requested_outputs(&model.name, &model.spec, &request.outputs)?;
    inputs(
        &model.name,
        &model.spec,
        std::mem::take(&mut request.inputs),
    )
}

/// Returns the inputs in the model's input order and the batch size they carry.
pub fn inputs(
    model: &str,
    spec: &ModelSpec,
    mut given: Vec<Tensor>,
) -> Result<(Vec<Tensor>, usize), InferError> {
    let names = || {
        spec.inputs
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (i, t) in given.iter().enumerate() {
        if !spec.inputs.iter().any(|s| s.name == t.name) {
            return Err(InferError::invalid(format!(
                "model '{model}' has no input named '{}'; its inputs are: {}",
                t.name,
                names()
            )));
        }
        if given[..i].iter().any(|o| o.name == t.name) {
            return Err(InferError::invalid(format!(
                "input '{}' is given more than once",
                t.name
            )));
        }
    }
    let mut ordered = Vec::with_capacity(spec.inputs.len());
    let mut batch: Option<(usize, &str)> = None;
    for s in &spec.inputs {
        let Some(pos) = given.iter().position(|t| t.name == s.name) else {
            return Err(InferError::invalid(format!(
                "missing input '{}' for model '{model}' (expects: {})",
                s.name,
                names()
            )));
        };
        let t = given.swap_remove(pos);
        if t.datatype != s.datatype {
            return Err(InferError::invalid(format!(
                "input '{}' has datatype {} but model '{model}' expects {}",
                t.name, t.datatype, s.datatype
            )));
        }
        let expected = spec.full_dims(s, -1);
        let fits = t.shape.len() == expected.len()
            && t.shape
                .iter()
                .zip(&expected)
                .all(|(got, want)| *want == -1 || *got as i64 == *want);
        if !fits {
            return Err(InferError::invalid(format!(
                "input '{}' has shape {} but model '{model}' expects {}{}",
                t.name,
                shape_string(&t.shape),
                shape_string(&expected),
                if spec.max_batch_size > 0 {
                    " (-1: any size; the first is the batch dimension)"
                } else {
                    " (-1: any size)"
                }
            )));
        }
        if spec.max_batch_size > 0 {
            let rows = t.shape[0];
            if rows == 0 || rows > spec.max_batch_size as usize {
                return Err(InferError::invalid(format!(
                    "input '{}' has batch size {rows} but model '{model}' takes 1 to {} (max_batch_size)",
                    t.name, spec.max_batch_size
                )));
            }
            match batch {
                Some((b, other)) if b != rows => {
                    return Err(InferError::invalid(format!(
                        "input '{}' has batch size {rows} but input '{other}' has {b}; all inputs must agree",
                        t.name
                    )))
                }
                _ => batch = Some((rows, &s.name)),
            }
        }
        ordered.push(t);
    }
    Ok((ordered, batch.map_or(1, |(b, _)| b)))
}

/// Checks the requested output names; an empty list means every output.
pub fn requested_outputs(
    model: &str,
    spec: &ModelSpec,
    requested: &[String],
) -> Result<(), InferError> {
    for (i, name) in requested.iter().enumerate() {
        if !spec.outputs.iter().any(|o| &o.name == name) {
            let names: Vec<&str> = spec.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(InferError::invalid(format!(
                "model '{model}' has no output named '{name}'; its outputs are: {}",
                names.join(", ")
            )));
        }
        if requested[..i].contains(name) {
            return Err(InferError::invalid(format!(
                "output '{name}' is requested more than once"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        repository::spec::TensorSpec,
        tensor::{DataType, TensorData},
    };

    fn spec() -> ModelSpec {
        let t = |name: &str| TensorSpec {
            name: name.into(),
            datatype: DataType::Fp32,
            dims: vec![2, -1],
            reshape: None,
        };
        ModelSpec {
            max_batch_size: 4,
            inputs: vec![t("a"), t("b")],
            outputs: vec![t("y")],
        }
    }

    fn tensor(name: &str, dt: DataType, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor {
            name: name.into(),
            datatype: dt,
            shape: shape.to_vec(),
            data: TensorData::Fixed(vec![0; n * dt.element_size().unwrap()].into()),
        }
    }

    fn err(given: Vec<Tensor>) -> String {
        inputs("m", &spec(), given).unwrap_err().to_string()
    }

    #[test]
    fn orders_inputs_and_reports_batch() {
        let (ordered, batch) = inputs(
            "m",
            &spec(),
            vec![
                tensor("b", DataType::Fp32, &[3, 2, 5]),
                tensor("a", DataType::Fp32, &[3, 2, 1]),
            ],
        )
        .unwrap();
        assert_eq!(ordered[0].name, "a");
        assert_eq!(batch, 3);
    }

    #[test]
    fn each_mistake_is_named() {
        let a = || tensor("a", DataType::Fp32, &[1, 2, 1]);
        assert!(err(vec![a()]).contains("missing input 'b'"));
        assert!(err(vec![a(), a()]).contains("'a' is given more than once"));
        assert!(
            err(vec![a(), tensor("c", DataType::Fp32, &[1, 2, 1])]).contains("no input named 'c'")
        );
        assert!(err(vec![a(), tensor("b", DataType::Int64, &[1, 2, 1])])
            .contains("datatype INT64 but model 'm' expects FP32"));
        assert!(err(vec![a(), tensor("b", DataType::Fp32, &[1, 3, 1])])
            .contains("shape [1, 3, 1] but model 'm' expects [-1, 2, -1]"));
        assert!(
            err(vec![a(), tensor("b", DataType::Fp32, &[1, 2])]).contains("expects [-1, 2, -1]")
        );
        assert!(err(vec![a(), tensor("b", DataType::Fp32, &[5, 2, 1])])
            .contains("batch size 5 but model 'm' takes 1 to 4"));
        assert!(err(vec![a(), tensor("b", DataType::Fp32, &[2, 2, 1])]).contains("input 'a' has 1"));
        let e = requested_outputs("m", &spec(), &["z".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no output named 'z'; its outputs are: y"));
    }
}
