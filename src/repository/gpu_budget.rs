//! Per-device memory: the budgets of every KIND_GPU instance placed on a device add up,
//! and the sum must fit the device, or no model on it loads (ONNX Runtime enforces each
//! instance's `gpu_mem_limit`, but not their sum).

use std::collections::BTreeMap;

use bytesize::ByteSize;

use super::config::ModelConfig;

/// What one model version asks of a device: where it runs and how much each instance may
/// hold. Placement follows the onnxruntime backend: every instance on the first group's
/// first GPU, each limited to the smallest budget given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuClaim {
    pub model: String,
    pub version: u64,
    pub device: u32,
    pub instances: u64,
    pub budget_per_instance: u64,
}

impl GpuClaim {
    pub fn of(model: &str, version: u64, config: &ModelConfig) -> Option<GpuClaim> {
        if !config.on_gpu() {
            return None;
        }
        Some(GpuClaim {
            model: model.to_owned(),
            version,
            device: config.gpu_device(),
            instances: config.instance_count() as u64,
            budget_per_instance: config.memory_budget()?,
        })
    }

    fn total(&self) -> u64 {
        self.instances * self.budget_per_instance
    }
}

/// For every claim on a device whose claims, with the process's `context` (held before any
/// arena), add up past its memory, why it cannot load. Devices whose memory is unknown are
/// not checked.
pub fn over_budget(
    claims: &[GpuClaim],
    device_memory: &BTreeMap<u32, u64>,
    context: u64,
) -> BTreeMap<(String, u64), String> {
    let mut by_device: BTreeMap<u32, Vec<&GpuClaim>> = BTreeMap::new();
    for claim in claims {
        by_device.entry(claim.device).or_default().push(claim);
    }
    let mut refused = BTreeMap::new();
    for (device, on_it) in by_device {
        let Some(&memory) = device_memory.get(&device) else {
            continue;
        };
        let sum: u64 = context + on_it.iter().map(|c| c.total()).sum::<u64>();
        if sum <= memory {
            continue;
        }
        let parts: Vec<String> = on_it
            .iter()
            .map(|c| {
                format!(
                    "{} v{}: {} x {}",
                    c.model,
                    c.version,
                    c.instances,
                    ByteSize::b(c.budget_per_instance)
                )
            })
            .collect();
        let reason = format!(
            "the memory budgets of the KIND_GPU instances on GPU {device} add up to {} ({} and \
             {} of CUDA context), more than its {}",
            ByteSize::b(sum),
            parts.join(", "),
            ByteSize::b(context),
            ByteSize::b(memory)
        );
        for claim in on_it {
            refused.insert((claim.model.clone(), claim.version), reason.clone());
        }
    }
    refused
}

/// Each device's total memory, from NVML where the NVIDIA driver is installed; empty
/// otherwise (no check then: a KIND_GPU model fails later for want of CUDA anyway).
pub fn device_memory_from_driver() -> BTreeMap<u32, u64> {
    let Ok(nvml) = nvml_wrapper::Nvml::init() else {
        return BTreeMap::new();
    };
    let count = nvml.device_count().unwrap_or(0);
    (0..count)
        .filter_map(|i| Some((i, nvml.device_by_index(i).ok()?.memory_info().ok()?.total)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu_config(device: u32, count: u32, budget: &str) -> ModelConfig {
        serde_yaml::from_str(&format!(
            "backend: onnxruntime\ninstance_group: [{{kind: KIND_GPU, gpus: [{device}], count: {count}, memory_budget: {budget}}}]\n"
        ))
        .unwrap()
    }

    #[test]
    fn budgets_on_one_device_add_up() {
        let claims: Vec<GpuClaim> = [
            ("det", 0, 2, "1GiB"),
            ("rec", 0, 2, "1GiB"),
            ("cls", 1, 4, "1GiB"),
        ]
        .into_iter()
        .map(|(m, d, n, b)| GpuClaim::of(m, 1, &gpu_config(d, n, b)).unwrap())
        .collect();
        let gib = 1 << 30;
        let context = gib / 2;
        let memory = BTreeMap::from([(0, 4 * gib), (1, 4 * gib + context)]);
        let refused = over_budget(&claims, &memory, context);
        assert_eq!(
            refused.keys().cloned().collect::<Vec<_>>(),
            vec![("det".to_owned(), 1), ("rec".to_owned(), 1)]
        );
        assert_eq!(
            refused[&("det".to_owned(), 1)],
            "the memory budgets of the KIND_GPU instances on GPU 0 add up to 4.5 GiB \
             (det v1: 2 x 1.0 GiB, rec v1: 2 x 1.0 GiB and 512.0 MiB of CUDA context), more \
             than its 4.0 GiB",
            "the context counts once per device"
        );
        // 4.5 GiB on GPU 1 fits exactly; an unknown device is not checked.
        assert!(
            over_budget(&claims, &BTreeMap::from([(1, 4 * gib + context)]), context).is_empty()
        );
    }

    #[test]
    fn only_budgeted_gpu_models_claim_memory() {
        let cpu: ModelConfig = serde_yaml::from_str("instance_group: [{count: 2}]\n").unwrap();
        assert_eq!(GpuClaim::of("m", 1, &cpu), None);
        let unbudgeted: ModelConfig = serde_yaml::from_str(
            "backend: onnxruntime\ninstance_group: [{kind: KIND_GPU, count: 2}]\n",
        )
        .unwrap();
        assert_eq!(GpuClaim::of("m", 1, &unbudgeted), None);
    }
}
