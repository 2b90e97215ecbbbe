//! An ensemble's steps resolved into a plan at load: which model each step runs, which
//! tensors it reads and writes, in an order where every tensor is written before it is
//! read. A config naming a missing model, an input or output its model lacks, a tensor no
//! step writes, or a cycle is a load error that names it.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    config::{EnsembleStep, ModelConfig},
    spec::{ModelSpec, TensorSpec},
    ServedModel,
};
use crate::tensor::DataType;

/// The resolved steps of an ensemble, in an order where each step's inputs are written by
/// earlier steps or are the ensemble's own inputs.
pub struct Pipeline {
    pub steps: Vec<Step>,
    /// Bytes one request may hold between steps (`max_intermediate_bytes`).
    pub max_intermediate_bytes: u64,
    /// Steps never started because their caller had left.
    pub steps_cancelled: metrics::Counter,
}

#[derive(Debug, Clone)]
pub struct Step {
    /// The step's place in the config's `step` list (what errors name).
    pub index: usize,
    pub model_name: String,
    /// The version to ask for: empty for the latest READY one.
    pub version: String,
    /// (the step model's input, the ensemble tensor it reads), in the model's input order.
    pub inputs: Vec<(String, String)>,
    /// (the step model's output, the ensemble tensor it writes).
    pub outputs: Vec<(String, String)>,
}

impl Step {
    /// How errors name the step: its place and its model.
    pub fn label(&self) -> String {
        format!("step {} (model '{}')", self.index, self.model_name)
    }
}

/// The step models as they stand at load: READY, or the reason they are not.
pub type Lookup<'a> = dyn Fn(&str, &str) -> Result<std::sync::Arc<ServedModel>, String> + 'a;

impl Pipeline {
    /// Resolves `config`'s steps against the step models `lookup` finds, checking every
    /// name and datatype, and orders them.
    pub fn plan(
        config: &ModelConfig,
        spec: &ModelSpec,
        lookup: &Lookup,
        steps_cancelled: metrics::Counter,
    ) -> Result<Pipeline, String> {
        let declared = config
            .ensemble_scheduling
            .as_ref()
            .map(|s| s.step.as_slice())
            .unwrap_or_default();
        // Every tensor's datatype, from the ensemble's inputs and each step's outputs.
        let mut written: BTreeMap<String, (DataType, String)> = spec
            .inputs
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    (t.datatype, "the ensemble's input".to_owned()),
                )
            })
            .collect();
        let mut steps = Vec::with_capacity(declared.len());
        let mut step_specs = Vec::with_capacity(declared.len());
        for (index, declared) in declared.iter().enumerate() {
            let (step, model_spec) = resolve_step(index, declared, lookup)?;
            for (output, tensor) in &step.outputs {
                if let Some((_, by)) = written.get(tensor) {
                    return Err(format!(
                        "{}: output '{output}' writes tensor '{tensor}', which {by} already writes",
                        step.label()
                    ));
                }
                let datatype = find(&model_spec.outputs, output).datatype;
                written.insert(tensor.clone(), (datatype, step.label()));
            }
            steps.push(step);
            step_specs.push(model_spec);
        }
        for (step, model_spec) in steps.iter().zip(&step_specs) {
            for (input, tensor) in &step.inputs {
                let want = find(&model_spec.inputs, input).datatype;
                match written.get(tensor) {
                    None => {
                        return Err(format!(
                            "{}: input '{input}' reads tensor '{tensor}', which no step writes \
                             and the ensemble does not take as input",
                            step.label()
                        ))
                    }
                    Some((got, by)) if *got != want => {
                        return Err(format!(
                            "{}: input '{input}' takes {want} but tensor '{tensor}' is {got} \
                             (written by {by})",
                            step.label()
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        for output in &spec.outputs {
            match written.get(&output.name) {
                Some((got, by)) if *got != output.datatype => {
                    return Err(format!(
                        "output '{}' is declared {} but {by} writes it as {got}",
                        output.name, output.datatype
                    ))
                }
                Some((_, by)) if by == "the ensemble's input" => {
                    return Err(format!(
                        "output '{}' is one of the ensemble's inputs; a step must write it",
                        output.name
                    ))
                }
                Some(_) => {}
                None => {
                    return Err(format!(
                        "output '{}' is written by no step (the steps write: {})",
                        output.name,
                        steps
                            .iter()
                            .flat_map(|s| s.outputs.iter().map(|(_, t)| t.as_str()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            }
        }
        Ok(Pipeline {
            steps: in_order(steps, spec)?,
            max_intermediate_bytes: config.params.max_intermediate_bytes,
            steps_cancelled,
        })
    }

    /// The steps needed for `outputs` (every ensemble output when empty), as indexes into
    /// `steps`: a request that asks for fewer outputs runs only what they need.
    pub fn needed(&self, outputs: &[String]) -> Vec<bool> {
        let mut wanted: BTreeSet<&str> = outputs.iter().map(String::as_str).collect();
        let mut needed = vec![outputs.is_empty(); self.steps.len()];
        if outputs.is_empty() {
            return needed;
        }
        // Backwards through the order: a step is needed when it writes a wanted tensor, and
        // then what it reads is wanted too.
        for (i, step) in self.steps.iter().enumerate().rev() {
            if step
                .outputs
                .iter()
                .any(|(_, t)| wanted.contains(t.as_str()))
            {
                needed[i] = true;
                wanted.extend(step.inputs.iter().map(|(_, t)| t.as_str()));
            }
        }
        needed
    }
}

fn find<'a>(specs: &'a [TensorSpec], name: &str) -> &'a TensorSpec {
    specs
        .iter()
        .find(|t| t.name == name)
        .expect("checked by resolve_step")
}

/// One step's model looked up, its maps checked against that model's inputs and outputs.
fn resolve_step(
    index: usize,
    declared: &EnsembleStep,
    lookup: &Lookup,
) -> Result<(Step, ModelSpec), String> {
    let version = match declared.model_version {
        -1 => String::new(),
        v => v.to_string(),
    };
    let mut step = Step {
        index,
        model_name: declared.model_name.clone(),
        version,
        inputs: Vec::new(),
        outputs: Vec::new(),
    };
    let model = lookup(&step.model_name, &step.version)
        .map_err(|reason| format!("{}: {reason}", step.label()))?;
    let spec = model.spec.clone();
    let names = |list: &[TensorSpec]| {
        list.iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(unknown) = declared
        .input_map
        .keys()
        .find(|k| !spec.inputs.iter().any(|t| &t.name == *k))
    {
        return Err(format!(
            "{}: input_map names '{unknown}', which is not an input of the model (its inputs: {})",
            step.label(),
            names(&spec.inputs)
        ));
    }
    for input in &spec.inputs {
        let Some(tensor) = declared.input_map.get(&input.name) else {
            return Err(format!(
                "{}: input_map gives no tensor for the model's input '{}'",
                step.label(),
                input.name
            ));
        };
        step.inputs.push((input.name.clone(), tensor.clone()));
    }
    for (output, tensor) in &declared.output_map {
        if !spec.outputs.iter().any(|t| &t.name == output) {
            return Err(format!(
                "{}: output_map names '{output}', which is not an output of the model (its outputs: {})",
                step.label(),
                names(&spec.outputs)
            ));
        }
        step.outputs.push((output.clone(), tensor.clone()));
    }
    Ok((step, spec))
}

/// The steps ordered so that every tensor is written before it is read; a cycle is named.
fn in_order(steps: Vec<Step>, spec: &ModelSpec) -> Result<Vec<Step>, String> {
    let mut available: BTreeSet<String> = spec.inputs.iter().map(|t| t.name.clone()).collect();
    let mut waiting = steps;
    let mut ordered = Vec::with_capacity(waiting.len());
    while !waiting.is_empty() {
        let (ready, rest): (Vec<Step>, Vec<Step>) = waiting
            .into_iter()
            .partition(|s| s.inputs.iter().all(|(_, t)| available.contains(t)));
        if ready.is_empty() {
            let labels: Vec<String> = rest.iter().map(Step::label).collect();
            return Err(format!(
                "the steps form a cycle: {} each wait for another's output",
                labels.join(", ")
            ));
        }
        available.extend(
            ready
                .iter()
                .flat_map(|s| s.outputs.iter().map(|(_, t)| t.clone())),
        );
        ordered.extend(ready);
        waiting = rest;
    }
    Ok(ordered)
}
