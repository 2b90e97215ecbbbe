//! The config in Triton's own message (`inference.ModelConfig`), as the ModelConfig RPC,
//! `/config` and `wharf config` give it: what the config declares, with the tensors,
//! batch size and scheduler that auto-complete filled in.

use std::collections::HashMap;

use super::{
    read::{ENGINES_KEY, MEMORY_BUDGET_KEY, MODEL_WARMUP_KEY, VERSION_TRAFFIC_KEY},
    BackendKind, Format, InstanceKind, ModelConfig, TensorConfig, VersionPolicy, Warmup,
};
use crate::{
    proto as pb,
    repository::spec::{ModelSpec, TensorSpec},
};

/// The config's entry for tensor `name`, where it has one.
fn configured<'a>(side: &'a Option<Vec<TensorConfig>>, name: &str) -> Option<&'a TensorConfig> {
    side.iter().flatten().find(|t| t.name == name)
}

fn data_type(t: crate::tensor::DataType) -> i32 {
    pb::DataType::from_str_name(&t.config_name()).unwrap_or(pb::DataType::TypeInvalid) as i32
}

impl ModelConfig {
    /// Triton's message for model `name` with `spec` (the tensors as resolved). Platform
    /// is `ensemble` for ensembles and left empty otherwise: `backend` names the engine.
    pub fn to_triton(&self, name: &str, spec: &ModelSpec) -> pb::ModelConfig {
        let reshape = |t: &TensorSpec| {
            t.reshape
                .clone()
                .map(|shape| pb::ModelTensorReshape { shape })
        };
        let parameters: HashMap<String, pb::ModelParameter> = self
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), v.string_value.clone()))
            .chain(self.wharf_parameters())
            .map(|(k, string_value)| (k, pb::ModelParameter { string_value }))
            .collect();
        let (platform, backend, filename, groups, scheduling) = if self.is_ensemble() {
            let steps = self.ensemble_scheduling.iter().flat_map(|s| &s.step);
            let ensemble = pb::ModelEnsembling {
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
            };
            (
                "ensemble".to_owned(),
                String::new(),
                String::new(),
                Vec::new(),
                Some(pb::model_config::SchedulingChoice::EnsembleScheduling(
                    ensemble,
                )),
            )
        } else {
            (
                String::new(),
                self.backend.as_str().to_owned(),
                self.model_filename().to_owned(),
                self.instance_groups(name),
                self.dynamic_batching.as_ref().map(|b| {
                    pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
                        preferred_batch_size: b
                            .preferred_batch_size
                            .iter()
                            .map(|s| *s as i32)
                            .collect(),
                        max_queue_delay_microseconds: b.max_queue_delay_microseconds,
                        preserve_ordering: b.preserve_ordering,
                        priority_levels: b.priority_levels.into(),
                        default_priority_level: b.default_priority_level.into(),
                        default_queue_policy: b.default_queue_policy.as_ref().map(|p| {
                            pb::ModelQueuePolicy {
                                timeout_action: p.timeout_action as i32,
                                default_timeout_microseconds: p.default_timeout_microseconds,
                                allow_timeout_override: p.allow_timeout_override,
                                max_queue_size: p.max_queue_size,
                            }
                        }),
                        ..Default::default()
                    })
                }),
            )
        };
        let policy = match self.version_policy.clone().unwrap_or_default() {
            VersionPolicy::Latest { num_versions } => {
                pb::model_version_policy::PolicyChoice::Latest(pb::model_version_policy::Latest {
                    num_versions: num_versions.get(),
                })
            }
            VersionPolicy::All {} => {
                pb::model_version_policy::PolicyChoice::All(pb::model_version_policy::All {})
            }
            VersionPolicy::Specific { versions } => {
                pb::model_version_policy::PolicyChoice::Specific(
                    pb::model_version_policy::Specific {
                        versions: versions.iter().map(|v| *v as i64).collect(),
                    },
                )
            }
        };
        pb::ModelConfig {
            name: name.to_owned(),
            platform,
            backend,
            version_policy: Some(pb::ModelVersionPolicy {
                policy_choice: Some(policy),
            }),
            max_batch_size: spec.max_batch_size as i32,
            input: spec
                .inputs
                .iter()
                .map(|t| pb::ModelInput {
                    name: t.name.clone(),
                    data_type: data_type(t.datatype),
                    dims: t.dims.clone(),
                    format: match configured(&self.input, &t.name).map(|c| c.format) {
                        Some(Format::Nchw) => pb::model_input::Format::Nchw,
                        Some(Format::Nhwc) => pb::model_input::Format::Nhwc,
                        _ => pb::model_input::Format::None,
                    } as i32,
                    reshape: reshape(t),
                    ..Default::default()
                })
                .collect(),
            output: spec
                .outputs
                .iter()
                .map(|t| pb::ModelOutput {
                    name: t.name.clone(),
                    data_type: data_type(t.datatype),
                    dims: t.dims.clone(),
                    reshape: reshape(t),
                    label_filename: configured(&self.output, &t.name)
                        .and_then(|c| c.label_filename.clone())
                        .unwrap_or_default(),
                    ..Default::default()
                })
                .collect(),
            instance_group: groups,
            model_warmup: self.warmup_samples(),
            default_model_filename: filename,
            scheduling_choice: scheduling,
            parameters,
            ..Default::default()
        }
    }

    /// wharf's own settings as the `parameters` keys that carry them in Triton's format
    /// (`read.rs` takes them back out).
    fn wharf_parameters(&self) -> Vec<(String, String)> {
        let mut keys = Vec::new();
        // `backend: "onnxruntime"` alone means ONNX Runtime, else tract.
        let implied = match self.backend {
            BackendKind::Onnxruntime => vec![BackendKind::Tract],
            _ => Vec::new(),
        };
        if !self.is_ensemble() && self.backend_fallbacks != implied {
            let engines: Vec<&str> = std::iter::once(self.backend)
                .chain(self.backend_fallbacks.iter().copied())
                .map(BackendKind::as_str)
                .collect();
            keys.push((ENGINES_KEY.to_owned(), engines.join(",")));
        }
        if let Some(budget) = self.memory_budget() {
            keys.push((MEMORY_BUDGET_KEY.to_owned(), budget.to_string()));
        }
        if let Some(traffic) = &self.version_traffic {
            let shares: Vec<String> = traffic.iter().map(|(v, s)| format!("{v}:{s}")).collect();
            keys.push((VERSION_TRAFFIC_KEY.to_owned(), shares.join(",")));
        }
        if let Some(Warmup::Enabled(false)) = self.model_warmup {
            keys.push((MODEL_WARMUP_KEY.to_owned(), "false".to_owned()));
        }
        keys
    }

    /// Triton's warm-up samples, where the config lists them (wharf's `true`, the default,
    /// and `false` have no Triton form).
    fn warmup_samples(&self) -> Vec<pb::ModelWarmup> {
        use pb::model_warmup::{input::InputDataType, Input};
        let Some(Warmup::Samples(samples)) = &self.model_warmup else {
            return Vec::new();
        };
        samples
            .iter()
            .map(|s| pb::ModelWarmup {
                name: s.name.clone(),
                batch_size: s.batch_size.get(),
                count: s.count.get(),
                inputs: s
                    .inputs
                    .iter()
                    .map(|(name, input)| {
                        let data = if input.random_data {
                            InputDataType::RandomData(true)
                        } else {
                            InputDataType::ZeroData(true)
                        };
                        let input = Input {
                            data_type: data_type(input.data_type),
                            dims: input.dims.clone(),
                            input_data_type: Some(data),
                        };
                        (name.clone(), input)
                    })
                    .collect(),
            })
            .collect()
    }

    /// The instance groups as they run: named `<model>_<i>`, CPU unless KIND_GPU, one
    /// instance on the CPU where the config gives none.
    fn instance_groups(&self, name: &str) -> Vec<pb::ModelInstanceGroup> {
        match self.instance_group.as_deref() {
            Some(groups) if !groups.is_empty() => groups
                .iter()
                .enumerate()
                .map(|(i, g)| pb::ModelInstanceGroup {
                    name: g.name.clone().unwrap_or_else(|| format!("{name}_{i}")),
                    count: g.count.get() as i32,
                    gpus: g.gpus.iter().map(|g| *g as i32).collect(),
                    kind: match g.kind {
                        InstanceKind::Gpu => pb::model_instance_group::Kind::Gpu,
                        InstanceKind::Cpu | InstanceKind::Auto => {
                            pb::model_instance_group::Kind::Cpu
                        }
                    } as i32,
                    ..Default::default()
                })
                .collect(),
            _ => vec![pb::ModelInstanceGroup {
                name: format!("{name}_0"),
                count: 1,
                kind: pb::model_instance_group::Kind::Cpu as i32,
                ..Default::default()
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// `config` written as config.pbtxt and read back.
    fn through_pbtxt(config: &ModelConfig) -> ModelConfig {
        let spec = ModelSpec {
            max_batch_size: 0,
            inputs: Vec::new(),
            outputs: Vec::new(),
        };
        let message = prost_reflect::DynamicMessage::decode(
            pb::message("ModelConfig"),
            config.to_triton("m", &spec).encode_to_vec().as_slice(),
        )
        .unwrap();
        let text = super::super::text_format::write(&message);
        ModelConfig::from_pbtxt(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn wharf_s_own_keys_survive_triton_s_format() {
        let yaml = ModelConfig::from_yaml(
            "backend: onnxruntime\ninstance_group: [{count: 2, kind: KIND_CPU, memory_budget: 512MiB}]\n\
             version_traffic: {1: 90, 2: 10}\nmodel_warmup: false\n\
             parameters: {intra_op_thread_count: {string_value: \"2\"}}",
        )
        .unwrap();
        let back = through_pbtxt(&yaml);
        assert_eq!(back.backend, BackendKind::Onnxruntime);
        assert!(back.backend_fallbacks.is_empty(), "strict stays strict");
        assert_eq!(back.memory_budget(), Some(512 << 20));
        assert_eq!(back.instance_count(), 2);
        assert_eq!(back.version_traffic, yaml.version_traffic);
        assert!(matches!(back.model_warmup, Some(Warmup::Enabled(false))));
        assert_eq!(back.params, yaml.params);
        // The shipped preference needs no key: backend "onnxruntime" means it.
        let preferred = ModelConfig::from_yaml("backend: [onnxruntime, tract]").unwrap();
        let back = through_pbtxt(&preferred);
        assert_eq!(back.backend_fallbacks, vec![BackendKind::Tract]);
        assert!(back.parameters.is_empty());
        let err = ModelConfig::from_pbtxt(
            "backend: \"tract\" parameters { key: \"engines\" value { string_value: \"onnxruntime\" } }",
        )
        .unwrap_err();
        assert!(
            err.contains("parameters.engines") && err.contains("backend is tract"),
            "{err}"
        );
    }
}
