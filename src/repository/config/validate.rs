//! What a model config's types alone cannot check: value ranges, keys that only go
//! together, and an ensemble's steps and declared tensors.

use super::*;

impl ModelConfig {
    /// Checks what the types alone cannot.
    pub(super) fn validate(&self) -> Result<(), String> {
        let key_err = |key: &str, what: String| Err(format!("key `{key}`: {what}"));
        if let Some(split) = &self.version_traffic {
            if split.values().all(|w| *w == 0) {
                return key_err(
                    "version_traffic",
                    "expected a share above 0 for at least one version, such as {1: 90, 2: 10}"
                        .into(),
                );
            }
        }
        for (list, key) in [(&self.input, "input"), (&self.output, "output")] {
            for (i, t) in list.iter().flatten().enumerate() {
                if t.name.is_empty() {
                    return key_err(
                        &format!("{key}[{i}].name"),
                        "expected a non-empty name".into(),
                    );
                }
                if let Some(d) = t.dims.iter().flatten().find(|d| **d < -1 || **d == 0) {
                    return key_err(
                        &format!("{key}[{i}].dims"),
                        format!("expected sizes >= 1 or -1 (any size), found {d}"),
                    );
                }
                if let Some(reshape) = &t.reshape {
                    let at = format!("{key}[{i}].reshape.shape");
                    if let Some(d) = reshape.shape.iter().find(|d| **d < -1 || **d == 0) {
                        return key_err(&at, format!("expected sizes >= 1 or -1, found {d}"));
                    }
                    let Some(dims) = &t.dims else {
                        return key_err(&at, "needs dims, the shape on the wire".into());
                    };
                    let count = |shape: &[i64]| -> Option<i64> {
                        shape.iter().all(|d| *d > 0).then(|| shape.iter().product())
                    };
                    if let (Some(wire), Some(model)) = (count(dims), count(&reshape.shape)) {
                        if wire != model {
                            return key_err(
                                &at,
                                format!(
                                    "holds {model} elements but dims {dims:?} hold {wire}; a \
                                     reshape keeps the element count"
                                ),
                            );
                        }
                    }
                }
                if t.label_filename.as_deref().is_some_and(|f| {
                    f.is_empty() || Path::new(f).components().count() != 1 || f.starts_with('.')
                }) {
                    return key_err(
                        &format!("{key}[{i}].label_filename"),
                        "expected a file name in the model's folder".into(),
                    );
                }
            }
        }
        if let Some(batching) = &self.dynamic_batching {
            if let Some(0) = batching
                .preferred_batch_size
                .iter()
                .copied()
                .find(|s| *s == 0)
            {
                return key_err(
                    "dynamic_batching.preferred_batch_size",
                    "expected sizes >= 1, found 0".into(),
                );
            }
            if let (Some(max), Some(big)) = (
                self.max_batch_size,
                batching.preferred_batch_size.iter().max(),
            ) {
                if *big > max {
                    return key_err(
                        "dynamic_batching.preferred_batch_size",
                        format!("expected sizes <= max_batch_size ({max}), found {big}"),
                    );
                }
            }
        }
        for (i, group) in self.instance_group.iter().flatten().enumerate() {
            if group.kind == InstanceKind::Gpu && self.backend == BackendKind::Tract {
                return key_err(
                    &format!("instance_group[{i}].kind"),
                    "tract runs on CPU only: expected KIND_CPU or KIND_AUTO, or backend onnxruntime for KIND_GPU".into(),
                );
            }
            if group.memory_budget.is_some_and(|b| b.as_u64() == 0) {
                return key_err(
                    &format!("instance_group[{i}].memory_budget"),
                    "expected a size above zero, such as 512MiB".into(),
                );
            }
        }
        if let Some(Warmup::Samples(samples)) = &self.model_warmup {
            for (i, s) in samples.iter().enumerate() {
                if s.inputs
                    .values()
                    .any(|inp| inp.zero_data && inp.random_data)
                {
                    return key_err(
                        &format!("model_warmup[{i}].inputs"),
                        "expected one of zero_data or random_data, not both".into(),
                    );
                }
                if let Some((name, inp)) = s
                    .inputs
                    .iter()
                    .find(|(_, inp)| inp.dims.iter().any(|d| *d < 1))
                {
                    return key_err(
                        &format!("model_warmup[{i}].inputs.{name}.dims"),
                        format!("expected concrete sizes >= 1, found {:?}", inp.dims),
                    );
                }
            }
        }
        let kinds: Vec<InstanceKind> = self
            .instance_group
            .iter()
            .flatten()
            .map(|g| g.kind)
            .collect();
        if kinds
            .windows(2)
            .any(|w| (w[0] == InstanceKind::Gpu) != (w[1] == InstanceKind::Gpu))
        {
            return key_err(
                "instance_group",
                "groups of one model must all be KIND_GPU or all CPU".into(),
            );
        }
        if let Some(f) = &self.default_model_filename {
            if f.contains('/') || f.contains("..") || f.is_empty() {
                return key_err(
                    "default_model_filename",
                    format!("expected a plain file name inside the version folder, found `{f}`"),
                );
            }
        }
        Ok(())
    }

    /// An ensemble needs its steps, and fully declared inputs and outputs (it has no model
    /// file to read them from); it has no instances or queue of its own.
    pub(super) fn validate_ensemble(&self) -> Result<(), String> {
        let key_err = |key: &str, what: String| Err(format!("key `{key}`: {what}"));
        let Some(scheduling) = &self.ensemble_scheduling else {
            return key_err(
                "ensemble_scheduling",
                "platform ensemble needs its steps: ensemble_scheduling: { step: [...] }".into(),
            );
        };
        if scheduling.step.is_empty() {
            return key_err(
                "ensemble_scheduling.step",
                "expected at least one step".into(),
            );
        }
        for (key, list) in [("input", &self.input), ("output", &self.output)] {
            let Some(list) = list.as_ref().filter(|l| !l.is_empty()) else {
                return key_err(key, format!("an ensemble must declare its {key}s"));
            };
            for (i, t) in list.iter().enumerate() {
                if t.data_type.is_none() || t.dims.is_none() {
                    return key_err(
                        &format!("{key}[{i}]"),
                        format!("an ensemble's {key} '{}' needs data_type and dims", t.name),
                    );
                }
            }
        }
        let own = [
            ("dynamic_batching", self.dynamic_batching.is_some()),
            ("instance_group", self.instance_group.is_some()),
            ("model_warmup", self.model_warmup.is_some()),
        ];
        if let Some((key, _)) = own.iter().find(|(_, given)| *given) {
            return key_err(
                key,
                "an ensemble has no instances or queue of its own: set it on the step models"
                    .into(),
            );
        }
        for (i, step) in scheduling.step.iter().enumerate() {
            if step.model_name.is_empty() {
                return key_err(
                    &format!("ensemble_scheduling.step[{i}].model_name"),
                    "expected a model name".into(),
                );
            }
            if step.model_version < -1 {
                return key_err(
                    &format!("ensemble_scheduling.step[{i}].model_version"),
                    format!(
                        "expected a version, or -1 for the latest, found {}",
                        step.model_version
                    ),
                );
            }
            if step.output_map.is_empty() {
                return key_err(
                    &format!("ensemble_scheduling.step[{i}].output_map"),
                    "a step must write at least one tensor".into(),
                );
            }
        }
        Ok(())
    }
}
