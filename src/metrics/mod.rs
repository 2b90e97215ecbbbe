//! Prometheus metrics: every name, label and bucket in one place, one recorder per server
//! (no global state, so servers in one process keep apart), and handles registered once
//! per model version so that recording is an atomic add.

pub mod endpoint;
pub mod saturation;

use std::{sync::Arc, time::Duration};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

pub use crate::job::Protocol;
pub use saturation::Backlog;

pub const BUILD_INFO: &str = "wharf_build_info";
pub const REQUESTS: &str = "wharf_requests_total";
pub const REQUESTS_REFUSED: &str = "wharf_requests_refused_total";
pub const INFERENCES: &str = "wharf_inferences_total";
pub const EXECUTIONS: &str = "wharf_executions_total";
pub const ENGINE_PANICS: &str = "wharf_engine_panics_total";
pub const REQUEST_DURATION: &str = "wharf_request_duration_seconds";
pub const QUEUE_DURATION: &str = "wharf_queue_duration_seconds";
pub const COMPUTE_DURATION: &str = "wharf_compute_duration_seconds";
pub const BATCH_ROWS: &str = "wharf_batch_rows";
pub const PENDING: &str = "wharf_pending_requests";
pub const QUEUE_CAPACITY: &str = "wharf_queue_capacity_requests";
pub const INSTANCES: &str = "wharf_instances";
pub const INSTANCES_BUSY: &str = "wharf_instances_busy";
pub const MEMORY_BUDGET: &str = "wharf_memory_budget_bytes";
pub const MODEL_ENGINE: &str = "wharf_model_engine";
pub const MEMORY_PEAK: &str = "wharf_memory_peak_bytes";
pub const MEMORY_SHARED: &str = "wharf_memory_shared_bytes";
pub const MODEL_READY: &str = "wharf_model_ready";
pub const MODEL_LOAD_DURATION: &str = "wharf_model_load_duration_seconds";
pub const MODEL_SATURATION: &str = "wharf_model_saturation_ratio";
pub const SATURATION: &str = "wharf_saturation_ratio";
pub const STEPS_CANCELLED: &str = "wharf_ensemble_steps_cancelled_total";
pub const REPOSITORY_POLLS: &str = "wharf_repository_polls_total";
pub const MODEL_LOADS: &str = "wharf_model_loads_total";
pub const TRACE_SPANS: &str = "wharf_trace_spans_total";

/// Request, queue and compute times. The PP-OCR models span cls on onnxruntime (under a
/// millisecond) to det on tract at 640x640 (seconds), so the buckets cover 0.5 ms to 30 s
/// at roughly 2-2.5x steps, finest where the latency objectives sit (10 ms - 1 s).
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 30.0,
];

/// Rows per engine call: every size up to the default preferred sizes (4-8), then powers.
pub const BATCH_BUCKETS: [f64; 13] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0,
];

/// How a request that reached a model version ended; each ends in exactly one, counted
/// where that is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// INVALID_ARGUMENT: the request does not fit the model.
    Invalid,
    /// RESOURCE_EXHAUSTED: the queue was full.
    QueueFull,
    /// DEADLINE_EXCEEDED: expired in the queue, never computed.
    Timeout,
    /// The caller went away before its answer was sent.
    Cancelled,
    /// The engine failed, or the worker stopped before answering.
    BackendError,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Success,
        Outcome::Invalid,
        Outcome::QueueFull,
        Outcome::Timeout,
        Outcome::Cancelled,
        Outcome::BackendError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Invalid => "invalid",
            Outcome::QueueFull => "queue_full",
            Outcome::Timeout => "timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::BackendError => "backend_error",
        }
    }
}

/// Why a request never reached a model version. Not labelled by model: an unknown name
/// comes from the caller, and would let any caller add series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownModel,
    ModelUnavailable,
    ShuttingDown,
    /// RESOURCE_EXHAUSTED: the requests in flight hold the whole byte budget.
    InflightBytes,
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Refusal::UnknownModel,
        Refusal::ModelUnavailable,
        Refusal::ShuttingDown,
        Refusal::InflightBytes,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::UnknownModel => "unknown_model",
            Refusal::ModelUnavailable => "model_unavailable",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::InflightBytes => "inflight_bytes",
        }
    }
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

/// (name, help) for every metric, so each scrape carries HELP and TYPE lines.
const HELP: [(&str, &str); 26] = [
    (BUILD_INFO, "Always 1; labels carry the wharf version and its compiled backends."),
    (REQUESTS, "Requests that reached a model version, by front end and how they ended."),
    (REQUESTS_REFUSED, "Requests refused before reaching a model version, by front end and reason."),
    (INFERENCES, "Rows computed (a request of batch size n counts n)."),
    (EXECUTIONS, "Engine calls; with dynamic batching, fewer than requests."),
    (ENGINE_PANICS, "Engine calls that panicked; each instance is rebuilt and serves on."),
    (REQUEST_DURATION, "Time from arrival to answer of successful requests, by front end."),
    (QUEUE_DURATION, "Time requests waited in the queue before an instance took them."),
    (COMPUTE_DURATION, "Time of one engine call, inputs joined to outputs split."),
    (BATCH_ROWS, "Rows per engine call."),
    (PENDING, "Requests admitted and waiting in the queue."),
    (QUEUE_CAPACITY, "Requests the queue admits before it refuses (max_queue_size)."),
    (INSTANCES, "Engine instances serving the model version."),
    (INSTANCES_BUSY, "Engine instances running a batch now."),
    (MEMORY_BUDGET, "Configured memory budget per instance."),
    (
        MODEL_ENGINE,
        "1 for the engine that serves a model version (its `engine` label).",
    ),
    (MEMORY_PEAK, "Peak bytes one engine call of the largest batch formed allocated at warmup."),
    (MEMORY_SHARED, "Bytes held once for all instances (weights, compiled plans)."),
    (MODEL_READY, "1 when the model version serves requests, else 0."),
    (STEPS_CANCELLED, "Ensemble steps never started because their caller left first."),
    (REPOSITORY_POLLS, "Scans of the model repository for changes (--model-control-mode poll)."),
    (MODEL_LOADS, "Loads and reloads asked for while serving (RepositoryModelLoad or a poll), by outcome."),
    (TRACE_SPANS, "Trace spans handed to the OTLP exporter (outcome exported) or lost: queue full, or the collector failed or was unreachable (dropped)."),
    (MODEL_LOAD_DURATION, "Time the model version took to load and warm."),
    (MODEL_SATURATION, "Pending work over what the instances finish within the latency objective, smoothed over 5 s; above 1 requests wait longer than the objective."),
    (SATURATION, "The pod's most saturated model version: the autoscaling signal."),
];

/// One server's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    refused: [[Counter; 4]; 2],
    saturation: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &DURATION_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(BATCH_ROWS.into()), &BATCH_BUCKETS)
            })
            .expect("bucket lists are not empty");
        let recorder = builder.build_recorder();
        for (name, help) in HELP {
            let key = KeyName::from_const_str(name);
            if name.ends_with("_total") {
                recorder.describe_counter(key, None, help.into());
            } else if name.ends_with("_seconds") || name == BATCH_ROWS {
                recorder.describe_histogram(key, None, help.into());
            } else {
                recorder.describe_gauge(key, None, help.into());
            }
        }
        let handle = recorder.handle();
        let refused = Protocol::ALL.map(|p| {
            Refusal::ALL.map(|r| {
                let labels = vec![
                    Label::new("protocol", p.label()),
                    Label::new("reason", r.label()),
                ];
                recorder.register_counter(&Key::from_parts(REQUESTS_REFUSED, labels), &METADATA)
            })
        });
        let features = if cfg!(feature = "onnxruntime") {
            "tract,onnxruntime"
        } else {
            "tract"
        };
        recorder
            .register_gauge(
                &Key::from_parts(
                    BUILD_INFO,
                    vec![
                        Label::new("version", env!("CARGO_PKG_VERSION")),
                        Label::new("backends", features),
                    ],
                ),
                &METADATA,
            )
            .set(1.0);
        let saturation = recorder.register_gauge(&Key::from_name(SATURATION), &METADATA);
        saturation.set(0.0);
        Arc::new(Metrics {
            recorder,
            handle,
            refused,
            saturation,
        })
    }

    /// The text exposition format, as scraped from /metrics.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets; without it, samples wait in
    /// memory until the next scrape, which may never come.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    pub fn refused(&self, protocol: Protocol, why: Refusal) {
        self.refused[protocol as usize][why as usize].increment(1);
    }

    /// One scan of the repository for changes done.
    pub fn polled(&self) {
        self.recorder
            .register_counter(&Key::from_name(REPOSITORY_POLLS), &METADATA)
            .increment(1);
    }

    /// A load or reload asked for while serving, and whether all of it succeeded.
    pub fn model_loaded(&self, model: &str, ok: bool) {
        let labels = vec![
            Label::new("model", model.to_owned()),
            Label::new("outcome", if ok { "ok" } else { "failed" }),
        ];
        self.recorder
            .register_counter(&Key::from_parts(MODEL_LOADS, labels), &METADATA)
            .increment(1);
    }

    /// The counters of exported and dropped trace spans.
    pub fn trace_spans(&self) -> crate::trace::SpanCounts {
        let counter = |outcome: &'static str| {
            self.recorder.register_counter(
                &Key::from_parts(TRACE_SPANS, vec![Label::new("outcome", outcome)]),
                &METADATA,
            )
        };
        crate::trace::SpanCounts {
            exported: counter("exported"),
            dropped: counter("dropped"),
        }
    }

    pub fn set_saturation(&self, value: f64) {
        self.saturation.set(value);
    }

    /// 1 or 0 for a model version; `version` is "" for a model whose folder is broken.
    pub fn set_ready(&self, model: &str, version: &str, ready: bool) {
        self.gauge(MODEL_READY, model, version)
            .set(if ready { 1.0 } else { 0.0 });
    }

    /// Handles for one model version, registered once at load.
    pub fn model(&self, model: &str, version: &str) -> ModelMetrics {
        let by_protocol = |name, p: Protocol| {
            let (name, mut labels) = labelled(name, model, version).into_parts();
            labels.push(Label::new("protocol", p.label()));
            (name, labels)
        };
        let outcomes = Protocol::ALL.map(|p| {
            Outcome::ALL.map(|o| {
                let (name, mut labels) = by_protocol(REQUESTS, p);
                labels.push(Label::new("outcome", o.label()));
                self.recorder
                    .register_counter(&Key::from_parts(name, labels), &METADATA)
            })
        });
        let request_duration = Protocol::ALL.map(|p| {
            let (name, labels) = by_protocol(REQUEST_DURATION, p);
            self.recorder
                .register_histogram(&Key::from_parts(name, labels), &METADATA)
        });
        let counter = |name| {
            self.recorder
                .register_counter(&labelled(name, model, version), &METADATA)
        };
        let histogram = |name| {
            self.recorder
                .register_histogram(&labelled(name, model, version), &METADATA)
        };
        let gauge = |name| self.gauge(name, model, version);
        let metrics = ModelMetrics {
            outcomes,
            inferences: counter(INFERENCES),
            executions: counter(EXECUTIONS),
            engine_panics: counter(ENGINE_PANICS),
            request_duration,
            queue_duration: histogram(QUEUE_DURATION),
            compute_duration: histogram(COMPUTE_DURATION),
            batch_rows: histogram(BATCH_ROWS),
            pending: gauge(PENDING),
            queue_capacity: gauge(QUEUE_CAPACITY),
            instances: gauge(INSTANCES),
            instances_busy: gauge(INSTANCES_BUSY),
            memory_peak: gauge(MEMORY_PEAK),
            memory_shared: gauge(MEMORY_SHARED),
            load_duration: gauge(MODEL_LOAD_DURATION),
            saturation: gauge(MODEL_SATURATION),
        };
        metrics.saturation.set(0.0);
        metrics.pending.set(0.0);
        metrics.instances_busy.set(0.0);
        metrics
    }

    /// An ensemble's count of steps its callers' leaving spared.
    pub fn steps_cancelled(&self, model: &str, version: &str) -> Counter {
        self.recorder
            .register_counter(&labelled(STEPS_CANCELLED, model, version), &METADATA)
    }

    /// Exported only for model versions that configure a budget: 0 would read as one.
    pub fn set_memory_budget(&self, model: &str, version: &str, bytes: u64) {
        self.gauge(MEMORY_BUDGET, model, version).set(bytes as f64);
    }

    /// The engine a loaded version runs on (tract, onnxruntime, a built-in step).
    pub fn set_engine(&self, model: &str, version: &str, engine: &str) {
        let mut key = labelled(MODEL_ENGINE, model, version).into_parts();
        key.1.push(Label::new("engine", engine.to_owned()));
        let key = Key::from_parts(key.0, key.1);
        self.recorder.register_gauge(&key, &METADATA).set(1.0);
    }

    fn gauge(&self, name: &'static str, model: &str, version: &str) -> Gauge {
        self.recorder
            .register_gauge(&labelled(name, model, version), &METADATA)
    }
}

fn labelled(name: &'static str, model: &str, version: &str) -> Key {
    Key::from_parts(
        name,
        vec![
            Label::new("model", model.to_owned()),
            Label::new("version", version.to_owned()),
        ],
    )
}

/// One model version's handles. `noop` ones (tests of parts below the server) record
/// nothing.
pub struct ModelMetrics {
    outcomes: [[Counter; 6]; 2],
    request_duration: [Histogram; 2],
    pub inferences: Counter,
    pub executions: Counter,
    pub engine_panics: Counter,
    pub queue_duration: Histogram,
    pub compute_duration: Histogram,
    pub batch_rows: Histogram,
    pub pending: Gauge,
    pub queue_capacity: Gauge,
    pub instances: Gauge,
    pub instances_busy: Gauge,
    pub memory_peak: Gauge,
    pub memory_shared: Gauge,
    pub load_duration: Gauge,
    pub saturation: Gauge,
}

impl ModelMetrics {
    pub fn noop() -> ModelMetrics {
        ModelMetrics {
            outcomes: std::array::from_fn(|_| std::array::from_fn(|_| Counter::noop())),
            request_duration: std::array::from_fn(|_| Histogram::noop()),
            inferences: Counter::noop(),
            executions: Counter::noop(),
            engine_panics: Counter::noop(),
            queue_duration: Histogram::noop(),
            compute_duration: Histogram::noop(),
            batch_rows: Histogram::noop(),
            pending: Gauge::noop(),
            queue_capacity: Gauge::noop(),
            instances: Gauge::noop(),
            instances_busy: Gauge::noop(),
            memory_peak: Gauge::noop(),
            memory_shared: Gauge::noop(),
            load_duration: Gauge::noop(),
            saturation: Gauge::noop(),
        }
    }

    pub fn ended(&self, protocol: Protocol, outcome: Outcome, requests: u64) {
        self.outcomes[protocol as usize][outcome as usize].increment(requests);
    }

    /// A successful request's time from arrival to answer.
    pub fn answered(&self, protocol: Protocol, took: Duration) {
        self.request_duration[protocol as usize].record(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_and_a_conventional_name() {
        for (name, help) in HELP {
            assert!(name.starts_with("wharf_") && !help.is_empty());
        }
        let m = Metrics::new();
        let model = m.model("m", "1");
        model.ended(Protocol::Http, Outcome::QueueFull, 2);
        model.batch_rows.record(4.0);
        model.answered(Protocol::Grpc, Duration::from_millis(3));
        m.refused(Protocol::Http, Refusal::ShuttingDown);
        let text = m.render();
        let series = [
            r#"wharf_requests_total{model="m",version="1",protocol="http",outcome="queue_full"} 2"#,
            r#"wharf_requests_total{model="m",version="1",protocol="grpc",outcome="queue_full"} 0"#,
            r#"wharf_requests_refused_total{protocol="http",reason="shutting_down"} 1"#,
            r#"wharf_requests_refused_total{protocol="grpc",reason="shutting_down"} 0"#,
            r#"wharf_batch_rows_bucket{model="m",version="1",le="4"} 1"#,
            r#"wharf_request_duration_seconds_bucket{model="m",version="1",protocol="grpc",le="0.005"} 1"#,
            r#"wharf_request_duration_seconds_count{model="m",version="1",protocol="http"} 0"#,
        ];
        for line in series {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(text.contains("# TYPE wharf_requests_total counter"));
        assert!(text.contains("# HELP wharf_saturation_ratio "));
    }

    #[test]
    fn servers_do_not_share_metrics() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.model("m", "1").inferences.increment(5);
        assert!(a
            .render()
            .contains(r#"wharf_inferences_total{model="m",version="1"} 5"#));
        assert!(!b.render().contains("wharf_inferences_total{"));
    }
}
