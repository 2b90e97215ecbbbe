//! Protobuf answers built from a served model: metadata, config and statistics.

use super::pb;
use crate::repository::{
    config::{BackendKind, ModelConfig, TensorConfig},
    spec::TensorSpec,
    Runner, ServedModel,
};

/// ModelMetadata: the served version's tensors, full dims with -1 for any size.
pub fn metadata(model: &ServedModel, versions: Vec<String>) -> pb::ModelMetadataResponse {
    let describe = |t: &TensorSpec| pb::model_metadata_response::TensorMetadata {
        name: t.name.clone(),
        datatype: t.datatype.as_str().into(),
        shape: model.spec.full_dims(t, -1),
    };
    pb::ModelMetadataResponse {
        name: model.name.clone(),
        versions,
        platform: platform(&model.config),
        inputs: model.spec.inputs.iter().map(describe).collect(),
        outputs: model.spec.outputs.iter().map(describe).collect(),
    }
}

fn platform(config: &ModelConfig) -> String {
    if config.is_ensemble() {
        return "ensemble".into();
    }
    match config.backend {
        BackendKind::Tract => "tract_onnx".into(),
        BackendKind::Onnxruntime => "onnxruntime_onnx".into(),
        builtin => format!("wharf_{}", builtin.as_str()),
    }
}

fn duration(t: crate::stats::Tally) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration {
        count: t.count,
        ns: t.nanos,
    })
}

/// Triton's ModelStatistics message for a served version.
/// ModelStatistics for one version (Triton's fields; no cache, so its counts are zero).
pub fn statistics(model: &ServedModel) -> pb::ModelStatistics {
    let s = model.stats.snapshot();
    pb::ModelStatistics {
        name: model.name.clone(),
        version: model.version.to_string(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(s.success),
            fail: duration(s.fail),
            queue: duration(s.queue),
            compute_input: duration(s.compute_input),
            compute_infer: duration(s.compute_infer),
            compute_output: duration(s.compute_output),
            cache_hit: duration(Default::default()),
            cache_miss: duration(Default::default()),
        }),
        batch_stats: s
            .batches
            .iter()
            .map(|(rows, b)| pb::InferBatchStatistics {
                batch_size: *rows,
                compute_input: duration(b.compute_input),
                compute_infer: duration(b.compute_infer),
                compute_output: duration(b.compute_output),
            })
            .collect(),
        memory_usage: vec![pb::MemoryUsage {
            r#type: "CPU".into(),
            id: 0,
            byte_size: model.engine().map_or(0, |e| e.shared_bytes),
        }],
        response_stats: Default::default(),
    }
}

/// The config's entry for tensor `name`, where it has one.
fn configured<'a>(side: &'a Option<Vec<TensorConfig>>, name: &str) -> Option<&'a TensorConfig> {
    side.iter().flatten().find(|t| t.name == name)
}

/// Triton's ModelConfig message for a served version: the config as resolved.
/// ModelConfig as Triton's tools read it, from the config and what loading resolved.
pub fn model_config(model: &ServedModel) -> pb::ModelConfig {
    use crate::repository::config::{Format, InstanceKind, VersionPolicy};
    let c = &model.config;
    let dtype = |t: crate::tensor::DataType| {
        pb::DataType::from_str_name(&t.config_name()).unwrap_or(pb::DataType::TypeInvalid) as i32
    };
    let batching = c.dynamic_batching.as_ref().map(|b| {
        pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
            preferred_batch_size: b.preferred_batch_size.iter().map(|s| *s as i32).collect(),
            max_queue_delay_microseconds: b.max_queue_delay_microseconds,
            preserve_ordering: b.preserve_ordering,
            priority_levels: b.priority_levels.into(),
            default_priority_level: b.default_priority_level.into(),
            default_queue_policy: b
                .default_queue_policy
                .as_ref()
                .map(|p| pb::ModelQueuePolicy {
                    timeout_action: p.timeout_action as i32,
                    default_timeout_microseconds: p.default_timeout_microseconds,
                    allow_timeout_override: p.allow_timeout_override,
                    max_queue_size: p.max_queue_size,
                }),
            priority_queue_policy: Default::default(),
        })
    });
    let groups = match c.instance_group.as_deref() {
        Some(groups) if !groups.is_empty() => groups
            .iter()
            .enumerate()
            .map(|(i, g)| pb::ModelInstanceGroup {
                name: g
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{}_{i}", model.name)),
                count: g.count.get() as i32,
                gpus: g.gpus.iter().map(|g| *g as i32).collect(),
                kind: match g.kind {
                    InstanceKind::Gpu => pb::model_instance_group::Kind::Gpu,
                    InstanceKind::Cpu | InstanceKind::Auto => pb::model_instance_group::Kind::Cpu,
                } as i32,
                ..Default::default()
            })
            .collect(),
        _ => vec![pb::ModelInstanceGroup {
            name: format!("{}_0", model.name),
            count: 1,
            kind: pb::model_instance_group::Kind::Cpu as i32,
            ..Default::default()
        }],
    };
    let policy = match c.version_policy.clone().unwrap_or_default() {
        VersionPolicy::Latest { num_versions } => {
            pb::model_version_policy::PolicyChoice::Latest(pb::model_version_policy::Latest {
                num_versions: num_versions.get(),
            })
        }
        VersionPolicy::All {} => {
            pb::model_version_policy::PolicyChoice::All(pb::model_version_policy::All {})
        }
        VersionPolicy::Specific { versions } => {
            pb::model_version_policy::PolicyChoice::Specific(pb::model_version_policy::Specific {
                versions: versions.iter().map(|v| *v as i64).collect(),
            })
        }
    };
    let reshape = |t: &TensorSpec| {
        t.reshape
            .clone()
            .map(|shape| pb::ModelTensorReshape { shape })
    };
    let mut parameters = std::collections::HashMap::new();
    let param = |v: String| pb::ModelParameter { string_value: v };
    if let Some(engine) = model.engine() {
        let curve: Vec<String> = engine
            .profile
            .curves
            .fallback
            .points()
            .iter()
            .map(|(rows, t)| format!("{rows}:{}", t.as_micros()))
            .collect();
        parameters.insert("batch_cost_us".into(), param(curve.join(",")));
        let peaks: Vec<String> = engine
            .profile
            .peak_bytes
            .iter()
            .map(|(r, b)| format!("{r}:{b}"))
            .collect();
        parameters.insert("batch_peak_bytes".into(), param(peaks.join(",")));
        parameters.insert(
            "batch_rows_allowed".into(),
            param(engine.scheduler.policy().max_rows.to_string()),
        );
        parameters.insert(
            "shared_bytes".into(),
            param(engine.shared_bytes.to_string()),
        );
    }
    let scheduling = match model.runner() {
        Runner::Engine(_) => batching,
        Runner::Ensemble(pipeline) => {
            parameters.insert(
                "max_intermediate_bytes".into(),
                param(pipeline.max_intermediate_bytes.to_string()),
            );
            let steps = c.ensemble_scheduling.iter().flat_map(|s| &s.step);
            Some(pb::model_config::SchedulingChoice::EnsembleScheduling(
                pb::ModelEnsembling {
                    step: steps
                        .map(|s| pb::model_ensembling::Step {
                            model_name: s.model_name.clone(),
                            model_version: s.model_version,
                            input_map: s.input_map.clone().into_iter().collect(),
                            output_map: s.output_map.clone().into_iter().collect(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                },
            ))
        }
    };
    let (groups, backend, filename) = if c.is_ensemble() {
        (Vec::new(), String::new(), String::new())
    } else {
        (groups, c.backend.as_str().into(), c.model_filename().into())
    };
    for (i, g) in c.instance_group.iter().flatten().enumerate() {
        if let Some(budget) = g.memory_budget {
            parameters.insert(
                format!("instance_group[{i}].memory_budget_bytes"),
                pb::ModelParameter {
                    string_value: budget.as_u64().to_string(),
                },
            );
        }
    }
    pb::ModelConfig {
        name: model.name.clone(),
        platform: platform(c),
        backend,
        version_policy: Some(pb::ModelVersionPolicy {
            policy_choice: Some(policy),
        }),
        max_batch_size: model.spec.max_batch_size as i32,
        input: model
            .spec
            .inputs
            .iter()
            .map(|t| pb::ModelInput {
                name: t.name.clone(),
                data_type: dtype(t.datatype),
                dims: t.dims.clone(),
                format: match configured(&c.input, &t.name).map(|c| c.format) {
                    Some(Format::Nchw) => pb::model_input::Format::Nchw,
                    Some(Format::Nhwc) => pb::model_input::Format::Nhwc,
                    _ => pb::model_input::Format::None,
                } as i32,
                reshape: reshape(t),
                ..Default::default()
            })
            .collect(),
        output: model
            .spec
            .outputs
            .iter()
            .map(|t| pb::ModelOutput {
                name: t.name.clone(),
                data_type: dtype(t.datatype),
                dims: t.dims.clone(),
                reshape: reshape(t),
                label_filename: configured(&c.output, &t.name)
                    .and_then(|c| c.label_filename.clone())
                    .unwrap_or_default(),
                ..Default::default()
            })
            .collect(),
        instance_group: groups,
        default_model_filename: filename,
        scheduling_choice: scheduling,
        parameters,
        ..Default::default()
    }
}
