//! A model's batching policy as its config asks for it: the scheduler's typed values from
//! Triton's `dynamic_batching` fields.

use std::time::Duration;

use super::config::ModelConfig;
use crate::batching::policy::{BatchPolicy, DEFAULT_PREFERRED, DEFAULT_QUEUE_CAPACITY};

/// The policy a config asks for; `max_batch_size` is the resolved one (0: unbatched).
pub fn batch_policy(config: &ModelConfig, max_batch_size: u32) -> BatchPolicy {
    let batching = config.dynamic_batching.as_ref();
    let queue = batching
        .and_then(|b| b.default_queue_policy.clone())
        .unwrap_or_default();
    let max_rows = max_batch_size.max(1) as usize;
    let enabled = batching.is_some() && max_batch_size > 0;
    let mut preferred: Vec<usize> = match batching {
        Some(b) if !b.preferred_batch_size.is_empty() => {
            b.preferred_batch_size.iter().map(|s| *s as usize).collect()
        }
        _ => DEFAULT_PREFERRED.to_vec(),
    };
    preferred.retain(|s| *s <= max_rows);
    preferred.sort_unstable();
    preferred.dedup();
    let levels = batching.map_or(0, |b| b.priority_levels);
    BatchPolicy {
        enabled,
        max_rows,
        form_rows: max_rows,
        preferred,
        max_queue_delay: Duration::from_micros(
            batching.map_or(0, |b| b.max_queue_delay_microseconds),
        ),
        max_queue_size: match queue.max_queue_size {
            0 => DEFAULT_QUEUE_CAPACITY,
            n => n as usize,
        },
        default_timeout: match queue.default_timeout_microseconds {
            0 => None,
            us => Some(Duration::from_micros(us)),
        },
        allow_timeout_override: queue.allow_timeout_override,
        timeout_action: queue.timeout_action,
        priority_levels: levels,
        default_priority: match batching.map_or(0, |b| b.default_priority_level) {
            0 => levels.div_ceil(2).max(1),
            p => p,
        },
        direct: batching.is_none(),
    }
}
