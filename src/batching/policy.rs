//! The batching policy of one model version, resolved from its config and its measured
//! memory needs.

use std::time::Duration;

use serde::Deserialize;

/// Preferred sizes when a config turns dynamic batching on without naming any.
pub const DEFAULT_PREFERRED: [usize; 2] = [4, 8];
/// Requests waiting per model when the config sets no `max_queue_size`: deep enough to
/// absorb a burst at the default batch sizes, short enough that nothing waits for seconds.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// What happens to a request whose queue timeout passes before it runs (Triton's
/// `timeout_action`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum TimeoutAction {
    #[default]
    #[serde(rename = "REJECT")]
    Reject,
    #[serde(rename = "DELAY")]
    Delay,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BatchPolicy {
    /// Whether requests are grouped at all; without dynamic_batching each request runs
    /// alone, as in Triton.
    pub enabled: bool,
    /// Rows a formed batch may hold: the config's max_batch_size, lowered to what fits the
    /// memory budget.
    pub max_rows: usize,
    /// Rows the scheduler packs a batch up to: max_rows, or less where the measured cost
    /// curve says bigger calls cost more than the same rows in pieces (then idle instances
    /// take the pieces in parallel instead of one instance running them in turn). A lone
    /// request may still carry up to max_rows.
    pub form_rows: usize,
    /// Batch sizes worth waiting for, ascending, each <= form_rows.
    pub preferred: Vec<usize>,
    /// How long the oldest request of a group may wait for its batch to fill.
    pub max_queue_delay: Duration,
    /// Requests waiting, past which new ones are refused at once.
    pub max_queue_size: usize,
    /// How long a request may wait in the queue (None: as long as it takes).
    pub default_timeout: Option<Duration>,
    /// Whether a request's own `timeout` parameter may replace the default.
    pub allow_timeout_override: bool,
    /// REJECT answers an expired request DEADLINE_EXCEEDED; DELAY lets it wait on.
    pub timeout_action: TimeoutAction,
    /// 0: one level; otherwise 1 (highest) ..= priority_levels.
    pub priority_levels: u32,
    pub default_priority: u32,
    /// Requests go straight to the instances' channel, one a batch, with no scheduler
    /// task between: for models without dynamic batching, which have nothing to group,
    /// order or hold back. Deadlines and gone callers are then checked as an instance
    /// takes each job.
    pub direct: bool,
}

impl BatchPolicy {
    /// Caps every call at `rows` (what the memory budget allows).
    pub fn cap_rows(&mut self, rows: usize) {
        self.max_rows = self.max_rows.min(rows.max(1));
        self.cap_form_rows(self.max_rows);
    }

    /// Caps the batches the scheduler forms at `rows` (what is efficient).
    pub fn cap_form_rows(&mut self, rows: usize) {
        self.form_rows = self.form_rows.min(rows.max(1)).min(self.max_rows);
        let max = self.form_rows;
        self.preferred.retain(|s| *s <= max);
    }

    /// The size at which a group is full without waiting: the largest preferred size, or
    /// max_rows where none is preferred.
    pub fn full_rows(&self) -> usize {
        if !self.enabled {
            return 1;
        }
        self.preferred.last().copied().unwrap_or(self.form_rows)
    }

    /// The priority a request asked for (1 = highest), or the default; out of range is
    /// refused by the caller.
    pub fn priority(&self, asked: Option<u64>) -> Result<u32, String> {
        match asked {
            None | Some(0) => Ok(self.default_priority),
            Some(p) if self.priority_levels == 0 => Err(format!(
                "priority {p} given but the model has no priority_levels configured"
            )),
            Some(p) if p > self.priority_levels as u64 => Err(format!(
                "priority {p} is out of range: the model has priority levels 1 to {}",
                self.priority_levels
            )),
            Some(p) => Ok(p as u32),
        }
    }
}
