//! Per-device memory: the budgets of every KIND_GPU instance placed on a device add up,
//! and the sum must fit the device, or no model on it loads (ONNX Runtime enforces each
//! instance's `gpu_mem_limit`, but not their sum).

use std::collections::BTreeMap;

use bytesize::ByteSize;

use super::{config::ModelConfig, loader::LoadTask, spec::DEFAULT_MAX_BATCH_SIZE};

/// Device memory each ONNX Runtime CUDA session holds outside its arena (its cuDNN and
/// cuBLAS handles and their workspaces): measured on an H200, 8 sessions of cls held 828
/// MiB more than 2 (with arenas of 10 MiB).
pub const SESSION_OVERHEAD: u64 = 140 << 20;

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
    /// Sessions each instance keeps: one per batch bucket.
    pub sessions_per_instance: u64,
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
            sessions_per_instance: sessions_per_instance(config),
        })
    }

    fn total(&self) -> u64 {
        self.instances * (self.budget_per_instance + self.sessions_per_instance * SESSION_OVERHEAD)
    }
}

/// One session per batch bucket where batches are padded to several, else one.
fn sessions_per_instance(config: &ModelConfig) -> u64 {
    let max = config.max_batch_size.unwrap_or(DEFAULT_MAX_BATCH_SIZE) as usize;
    let batching = config.dynamic_batching.is_some() && max > 0;
    config
        .params
        .bucket_rows(batching, max, config.on_gpu())
        .len()
        .max(1) as u64
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
                    "{} v{}: {} x ({} + {} session(s) x {})",
                    c.model,
                    c.version,
                    c.instances,
                    ByteSize::b(c.budget_per_instance),
                    c.sessions_per_instance,
                    ByteSize::b(SESSION_OVERHEAD)
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

/// `tasks` split by whether their claims fit `memory` (bytes per device) beside `serving`.
pub fn split_by_gpu_budget(
    serving: Vec<GpuClaim>,
    tasks: Vec<LoadTask>,
    memory: &BTreeMap<u32, u64>,
    context: u64,
) -> (Vec<LoadTask>, Vec<(LoadTask, String)>) {
    let mut claims = serving;
    claims.extend(
        tasks
            .iter()
            .filter_map(|t| GpuClaim::of(&t.name, t.version, &t.config)),
    );
    let mut refused = over_budget(&claims, memory, context);
    let (mut fitting, mut failed) = (Vec::new(), Vec::new());
    for task in tasks {
        match refused.remove(&(task.name.clone(), task.version)) {
            Some(reason) => failed.push((task, reason)),
            None => fitting.push(task),
        }
    }
    (fitting, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu_config(device: u32, count: u32, budget: &str) -> ModelConfig {
        ModelConfig::from_yaml(&format!(
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
        // Each instance: its budget and its one session's handles.
        let four = 4 * (gib + SESSION_OVERHEAD) + context;
        let memory = BTreeMap::from([(0, 4 * gib), (1, four)]);
        let refused = over_budget(&claims, &memory, context);
        assert_eq!(
            refused.keys().cloned().collect::<Vec<_>>(),
            vec![("det".to_owned(), 1), ("rec".to_owned(), 1)]
        );
        assert_eq!(
            refused[&("det".to_owned(), 1)],
            "the memory budgets of the KIND_GPU instances on GPU 0 add up to 5.0 GiB \
             (det v1: 2 x (1.0 GiB + 1 session(s) x 140.0 MiB), rec v1: 2 x (1.0 GiB + 1 \
             session(s) x 140.0 MiB) and 512.0 MiB of CUDA context), more than its 4.0 GiB",
            "the context counts once per device"
        );
        // GPU 1 fits exactly; an unknown device is not checked.
        assert!(over_budget(&claims, &BTreeMap::from([(1, four)]), context).is_empty());
    }

    #[test]
    fn each_batch_bucket_is_a_session_with_its_own_handles() {
        let gpu = "backend: onnxruntime\nmax_batch_size: 8\ninstance_group: [{kind: KIND_GPU, count: 2, memory_budget: 1GiB}]\n";
        let sessions = |extra: &str| {
            let config = ModelConfig::from_yaml(&format!("{gpu}{extra}")).unwrap();
            GpuClaim::of("m", 1, &config).unwrap().sessions_per_instance
        };
        assert_eq!(sessions(""), 1, "no dynamic batching, no buckets");
        assert_eq!(sessions("dynamic_batching: {}\n"), 4, "1, 2, 4 and 8");
        assert_eq!(
            sessions("dynamic_batching: {}\nparameters: {batch_buckets: {string_value: max}}\n"),
            1
        );
    }

    #[test]
    fn only_budgeted_gpu_models_claim_memory() {
        let cpu = ModelConfig::from_yaml("instance_group: [{count: 2}]\n").unwrap();
        assert_eq!(GpuClaim::of("m", 1, &cpu), None);
        let unbudgeted = ModelConfig::from_yaml(
            "backend: onnxruntime\ninstance_group: [{kind: KIND_GPU, count: 2}]\n",
        )
        .unwrap();
        assert_eq!(GpuClaim::of("m", 1, &unbudgeted), None);
    }
}
