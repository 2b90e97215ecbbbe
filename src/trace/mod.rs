//! OpenTelemetry traces: which requests are traced (`settings`), the spans a traced
//! request makes, from its front end down to the engine call it rode in, and where
//! they go (`export`). Off, a request pays one branch; spans are built with the
//! OpenTelemetry API directly, with times taken where things happened, because the
//! queue and engine spans end on a worker thread, long after and far from the request's
//! future.

mod export;
mod settings;

use std::{
    borrow::Cow,
    sync::OnceLock,
    time::{Instant, SystemTime},
};

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _},
    Context, KeyValue,
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracer, SdkTracerProvider},
};

pub use export::{SpanCounts, TraceConfig, Transport};
pub use settings::{Change, Level, Settings, TraceSettings};

/// The server's tracing: its settings always (the trace extension reads and writes them),
/// and an exporter where one is configured.
#[derive(Debug)]
pub struct Tracing {
    settings: TraceSettings,
    exporting: Option<Exporting>,
}

#[derive(Debug)]
struct Exporting {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl Tracing {
    /// Tracing as `config` says, counting spans in `counts`. Inside the Tokio runtime.
    pub fn from_config(
        config: &TraceConfig,
        counts: Option<SpanCounts>,
    ) -> Result<Tracing, String> {
        let exporting = match (config.export, counts) {
            (true, Some(counts)) => {
                let (processor, resource) = export::processor(config, counts)?;
                let provider = SdkTracerProvider::builder()
                    .with_span_processor(processor)
                    .with_resource(resource)
                    // wharf decides what is traced before it builds a span (settings.rs).
                    .with_sampler(Sampler::AlwaysOn)
                    .build();
                let tracer = provider.tracer("wharf");
                Some(Exporting {
                    provider,
                    tracer,
                    propagator: TraceContextPropagator::new(),
                })
            }
            _ => None,
        };
        Ok(Tracing {
            settings: TraceSettings::new(config.settings),
            exporting,
        })
    }

    pub fn settings(&self) -> &TraceSettings {
        &self.settings
    }

    /// Whether spans go anywhere: front ends look for trace context only then.
    pub fn is_exporting(&self) -> bool {
        self.exporting.is_some()
    }

    /// A request's server span, where this request is to be traced: under the caller's
    /// span where `carrier` holds a W3C `traceparent`, honouring its sampled flag.
    pub fn begin(
        &self,
        model: &str,
        carrier: &dyn Extractor,
        name: impl Into<Cow<'static, str>>,
        attributes: Vec<KeyValue>,
    ) -> Option<ServerTrace> {
        let exporting = self.exporting.as_ref()?;
        // Most requests carry no context: they pay one header lookup, not a Context.
        let parent = carrier.get("traceparent").map(|_| {
            exporting
                .propagator
                .extract_with_context(&Context::new(), carrier)
        });
        let parent_sampled = parent.as_ref().and_then(|cx| {
            let remote = cx.span().span_context().clone();
            remote.is_valid().then(|| remote.is_sampled())
        });
        if !self.settings.sample(model, parent_sampled) {
            return None;
        }
        let parent = parent.unwrap_or_default();
        let tracer = &exporting.tracer;
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_start_time(wall(Instant::now()))
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        Some(ServerTrace {
            cx: TraceCx {
                cx: parent.with_span(span),
                tracer: tracer.clone(),
            },
        })
    }

    /// Sends what is queued and stops the exporter (at the end of a drain).
    pub fn shutdown(&self) {
        if let Some(exporting) = &self.exporting {
            let _ = exporting.provider.shutdown();
        }
    }
}

/// A traced request's server span: ended by the front end once its answer is known.
#[derive(Debug)]
pub struct ServerTrace {
    cx: TraceCx,
}

impl ServerTrace {
    /// Where the request's own spans go: under the server span.
    pub fn context(&self) -> TraceCx {
        self.cx.clone()
    }

    /// The W3C `traceparent` of the server span, for the response.
    pub fn traceparent(&self) -> Option<String> {
        let mut header = Header(None);
        TraceContextPropagator::new().inject_context(&self.cx.cx, &mut header);
        header.0
    }

    /// The trace and span ids, as log lines carry them.
    pub fn ids(&self) -> (String, String) {
        let context = self.cx.cx.span().span_context().clone();
        (
            context.trace_id().to_string(),
            context.span_id().to_string(),
        )
    }

    /// A log span carrying the ids: JSON log lines written inside it name the trace.
    pub fn log_span(&self) -> tracing::Span {
        let (trace_id, span_id) = self.ids();
        tracing::info_span!("request", trace_id, span_id)
    }

    /// Ends the server span with its outcome.
    pub fn finish(self, attributes: Vec<KeyValue>, error: Option<String>) {
        self.cx.end(attributes, error);
    }
}

/// Collects the one header the propagator writes.
struct Header(Option<String>);

impl Injector for Header {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// A place in a traced request's span tree: new spans go under its span.
#[derive(Clone, Debug)]
pub struct TraceCx {
    cx: Context,
    tracer: SdkTracer,
}

impl TraceCx {
    /// A child span started now; it ends at `end`, or when its last handle is dropped.
    pub fn child(&self, name: impl Into<Cow<'static, str>>, attributes: Vec<KeyValue>) -> TraceCx {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(wall(Instant::now()))
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &self.cx);
        TraceCx {
            cx: self.cx.with_span(span),
            tracer: self.tracer.clone(),
        }
    }

    /// A child span that ran from `start` to `end`, recorded now.
    pub fn record(
        &self,
        name: impl Into<Cow<'static, str>>,
        start: Instant,
        end: Instant,
        attributes: Vec<KeyValue>,
    ) {
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(wall(start))
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &self.cx);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, wall(end));
    }

    /// Adds attributes to the span.
    pub fn set(&self, attributes: Vec<KeyValue>) {
        self.cx.span().set_attributes(attributes);
    }

    /// Ends the span, marked failed where `error` says why.
    pub fn end(&self, attributes: Vec<KeyValue>, error: Option<String>) {
        let span = self.cx.span();
        span.set_attributes(attributes);
        if let Some(message) = error {
            span.set_status(Status::error(message));
        }
        span.end_with_timestamp(wall(Instant::now()));
    }
}

/// The wall-clock time of a monotonic instant (spans carry wall times). Every span time
/// goes through one anchor, taken once, so that instants keep their order exactly: a
/// child never starts before its parent by the jitter of two clock reads. (The wall
/// clock stepped while serving is not followed; NTP's slewing moves both clocks alike.)
fn wall(at: Instant) -> SystemTime {
    static ANCHOR: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    let (anchor, anchor_wall) = *ANCHOR.get_or_init(|| (Instant::now(), SystemTime::now()));
    match at.checked_duration_since(anchor) {
        Some(after) => anchor_wall + after,
        None => anchor_wall - anchor.duration_since(at),
    }
}

/// gRPC metadata as a carrier of `traceparent`/`tracestate`.
pub struct MetadataCarrier<'a>(pub &'a tonic::metadata::MetadataMap);

impl Extractor for MetadataCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

pub use opentelemetry_http::HeaderExtractor;
