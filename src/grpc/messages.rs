//! Protobuf answers built from a served model: metadata, config and statistics.

use super::pb;
use crate::repository::{
    config::{BackendKind, ModelConfig},
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

/// Triton's ModelConfig message for a served version: the config as loading completed
/// it, with what loading measured (each batch size's cost and peak memory, the rows a
/// call may take) and the memory budgets among its parameters.
pub fn model_config(model: &ServedModel) -> pb::ModelConfig {
    let mut message = model.config.to_triton(&model.name, &model.spec);
    message.platform = platform(&model.config);
    let parameters = &mut message.parameters;
    let param = |v: String| pb::ModelParameter { string_value: v };
    match model.runner() {
        Runner::Engine(engine) => {
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
        Runner::Ensemble(pipeline) => {
            parameters.insert(
                "max_intermediate_bytes".into(),
                param(pipeline.max_intermediate_bytes.to_string()),
            );
        }
    }
    for (i, g) in model.config.instance_group.iter().flatten().enumerate() {
        if let Some(budget) = g.memory_budget {
            parameters.insert(
                format!("instance_group[{i}].memory_budget_bytes"),
                param(budget.as_u64().to_string()),
            );
        }
    }
    message
}
