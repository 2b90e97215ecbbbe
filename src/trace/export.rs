//! Where traces go: Triton's `--trace-config` settings and the standard `OTEL_*`
//! variables read into one typed config, and the OTLP pipeline (gRPC or HTTP/protobuf)
//! behind a bounded queue whose drops and failures are counted, never waited on.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use metrics::Counter;
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor},
    Resource,
};
use tracing::{info, warn};

use super::settings::{parse_count, parse_rate, Level, Settings};

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
}

impl Transport {
    fn parse(value: &str) -> Result<Transport, String> {
        match value {
            "grpc" => Ok(Transport::Grpc),
            "http/protobuf" | "http" => Ok(Transport::HttpProtobuf),
            _ => Err(format!(
                "OTLP protocol '{value}' is not supported; expected grpc or http/protobuf"
            )),
        }
    }
}

/// Everything `--trace-config` and the environment say about tracing, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// Whether spans are exported at all: an endpoint was given (flag or
    /// `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`) or `mode=opentelemetry` was set.
    pub export: bool,
    pub settings: Settings,
    pub transport: Transport,
    /// None: the exporter's own (the variables, else localhost:4317 or :4318/v1/traces).
    pub url: Option<String>,
    pub resource: Vec<(String, String)>,
    pub queue_size: usize,
    pub batch_size: usize,
    pub schedule_delay: Duration,
}

impl TraceConfig {
    /// Reads Triton's `--trace-config [opentelemetry,]KEY=VALUE` entries, and where they
    /// leave a setting open, the OTEL_* variables `env` answers.
    pub fn parse(
        entries: &[String],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<TraceConfig, String> {
        let mut mode_set = false;
        let (mut level, mut rate, mut count) = (None, None, None);
        let mut url = None;
        let mut transport = None;
        let mut resource = Vec::new();
        let mut queue_size = 2048;
        let mut batch_size = 512;
        let mut schedule_delay = Duration::from_millis(5000);
        for entry in entries {
            let (section, setting) = match entry.split_once(',') {
                Some((section, rest)) if !section.contains('=') => (Some(section), rest),
                _ => (None, entry.as_str()),
            };
            let (key, value) = setting.split_once('=').ok_or_else(|| {
                format!("--trace-config '{entry}': expected [opentelemetry,]KEY=VALUE")
            })?;
            let bad = |why: String| format!("--trace-config '{entry}': {why}");
            let number = |value: &str| {
                value
                    .parse::<u64>()
                    .map_err(|_| bad(format!("'{value}' is not a whole number")))
            };
            match (section, key) {
                (None, "mode") => match value {
                    "opentelemetry" => mode_set = true,
                    _ => return Err(bad("wharf traces in mode opentelemetry only (Triton's file mode is not implemented)".into())),
                },
                (None, "level") => level = Some(Level::parse(value).map_err(bad)?),
                (None, "rate") => rate = Some(parse_rate(value).map_err(bad)?),
                (None, "count") => count = Some(parse_count(value).map_err(bad)?),
                (None, "file" | "log-frequency") => {
                    return Err(bad("applies to Triton's file trace mode, which wharf does not implement".into()))
                }
                (Some("opentelemetry"), "url") => url = Some(value.to_owned()),
                (Some("opentelemetry"), "protocol") => {
                    transport = Some(Transport::parse(value).map_err(bad)?)
                }
                (Some("opentelemetry"), "resource") => {
                    let (k, v) = value
                        .split_once('=')
                        .ok_or_else(|| bad("a resource is KEY=VALUE".into()))?;
                    resource.push((k.to_owned(), v.to_owned()));
                }
                (Some("opentelemetry"), "bsp_max_queue_size") => {
                    queue_size = number(value)?.max(1) as usize
                }
                (Some("opentelemetry"), "bsp_max_export_batch_size") => {
                    batch_size = number(value)?.max(1) as usize
                }
                (Some("opentelemetry"), "bsp_schedule_delay") => {
                    schedule_delay = Duration::from_millis(number(value)?)
                }
                (Some("triton"), _) => {
                    return Err(bad("Triton's file trace mode is not implemented; wharf exports over OTLP".into()))
                }
                _ => return Err(bad(format!("unknown setting '{key}'"))),
            }
        }
        let transport = match transport {
            Some(t) => t,
            None => match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            {
                Some(value) => Transport::parse(&value)?,
                None => Transport::HttpProtobuf,
            },
        };
        let export = mode_set
            || url.is_some()
            || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        Ok(TraceConfig {
            export,
            settings: Settings {
                // Asking for an exporter asks for traces: TIMESTAMPS unless told otherwise.
                level: level.unwrap_or(if export {
                    Level::Timestamps
                } else {
                    Level::Off
                }),
                rate: rate.unwrap_or(1000),
                count: count.unwrap_or(-1),
            },
            transport,
            url,
            resource,
            queue_size,
            batch_size: batch_size.min(queue_size),
            schedule_delay,
        })
    }
}

/// Spans handed to the exporter and spans lost, as `wharf_trace_spans_total` counts them.
#[derive(Debug)]
pub struct SpanCounts {
    pub exported: Counter,
    pub dropped: Counter,
}

/// Builds the exporting span processor. Must run inside the server's Tokio runtime: the
/// exporters' connections run on it, whatever thread the batch processor exports from.
pub fn processor(config: &TraceConfig, counts: SpanCounts) -> Result<(Gate, Resource), String> {
    let timeout = std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis);
    let exporter = match config.transport {
        Transport::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(timeout);
            if let Some(url) = &config.url {
                builder = builder.with_endpoint(url.clone());
            }
            builder.build()
        }
        Transport::HttpProtobuf => {
            let client = OnRuntime {
                runtime: tokio::runtime::Handle::current(),
                client: opentelemetry_http::hyper::HyperClient::with_default_connector(
                    timeout, None,
                ),
            };
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(timeout);
            if let Some(url) = &config.url {
                builder = builder.with_endpoint(url.clone());
            }
            builder.build()
        }
    }
    .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        capacity: config.queue_size,
        counts,
        failing: AtomicBool::new(false),
        dropping: AtomicBool::new(false),
    });
    let batch = BatchSpanProcessor::builder(Counting {
        inner: exporter,
        shared: Arc::clone(&shared),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(config.queue_size)
            .with_max_export_batch_size(config.batch_size)
            .with_scheduled_delay(config.schedule_delay)
            .build(),
    )
    .build();
    let mut resource = Resource::builder();
    // The service is "wharf" unless OTEL_SERVICE_NAME or a resource names it.
    if std::env::var_os("OTEL_SERVICE_NAME").is_none()
        && !config.resource.iter().any(|(k, _)| k == "service.name")
    {
        resource = resource.with_service_name("wharf");
    }
    let resource = resource
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attributes(
            config
                .resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build();
    info!(
        transport = ?config.transport,
        url = config.url.as_deref().unwrap_or("(OTEL_EXPORTER_OTLP_* or the exporter's default)"),
        rate = config.settings.rate,
        "OpenTelemetry traces exported over OTLP"
    );
    Ok((Gate { batch, shared }, resource))
}

#[derive(Debug)]
struct Shared {
    /// Spans handed to the batch processor and not yet to the exporter.
    queued: AtomicUsize,
    capacity: usize,
    counts: SpanCounts,
    /// Logged once when export starts failing, once when it works again.
    failing: AtomicBool,
    dropping: AtomicBool,
}

/// The batch processor behind a count of what it holds: a span past its capacity is
/// dropped and counted here, before the processor would drop it uncounted.
#[derive(Debug)]
pub struct Gate {
    batch: BatchSpanProcessor,
    shared: Arc<Shared>,
}

impl SpanProcessor for Gate {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let shared = &self.shared;
        let admitted = shared
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < shared.capacity).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            self.batch.on_end(span);
        } else {
            shared.counts.dropped.increment(1);
            if !shared.dropping.swap(true, Ordering::Relaxed) {
                warn!(
                    capacity = shared.capacity,
                    "trace spans are being dropped: the export queue is full (counted in wharf_trace_spans_total{{outcome=\"dropped\"}}; logged once)"
                );
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.batch.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.batch.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.batch.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it sends and what fails to arrive.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    shared: Arc<Shared>,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let shared = &self.shared;
        let spans = batch.len();
        shared.queued.fetch_sub(spans, Ordering::Relaxed);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                shared.counts.exported.increment(spans as u64);
                if shared.failing.swap(false, Ordering::Relaxed) {
                    info!("trace export works again");
                }
                shared.dropping.store(false, Ordering::Relaxed);
            }
            Err(error) => {
                shared.counts.dropped.increment(spans as u64);
                if !shared.failing.swap(true, Ordering::Relaxed) {
                    warn!(%error, "trace export failed; its spans are dropped and counted in wharf_trace_spans_total{{outcome=\"dropped\"}} (logged once until it works again)");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Hyper's client run on the server's runtime: the batch processor exports from a
/// thread of its own, where hyper could not spawn its connections.
#[derive(Debug)]
struct OnRuntime {
    runtime: tokio::runtime::Handle,
    client: opentelemetry_http::hyper::HyperClient,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entries: &[&str], env: &[(&str, &str)]) -> Result<TraceConfig, String> {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        TraceConfig::parse(&entries, |key| {
            env.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn off_unless_an_endpoint_or_the_mode_is_given() {
        let config = parse(&[], &[]).unwrap();
        assert!(!config.export);
        assert_eq!(config.settings.level, Level::Off);
        let config = parse(
            &["opentelemetry,url=http://c:4318/v1/traces", "rate=10"],
            &[],
        )
        .unwrap();
        assert!(config.export);
        assert_eq!(config.settings.level, Level::Timestamps);
        assert_eq!(config.settings.rate, 10);
        assert_eq!(config.transport, Transport::HttpProtobuf);
        let config = parse(
            &[],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        )
        .unwrap();
        assert!(config.export);
        assert_eq!(config.transport, Transport::Grpc);
        let config = parse(&["mode=opentelemetry", "level=OFF"], &[]).unwrap();
        assert!(config.export);
        assert_eq!(config.settings.level, Level::Off);
    }

    #[test]
    fn each_bad_entry_is_named() {
        for (entry, needle) in [
            ("rate", "KEY=VALUE"),
            ("rate=often", "trace_rate"),
            ("count=-5", "trace_count"),
            ("level=TENSORS", "TENSORS"),
            ("mode=triton", "opentelemetry only"),
            ("file=/tmp/trace.json", "file trace mode"),
            ("opentelemetry,protocol=http/json", "http/json"),
            ("opentelemetry,colour=red", "colour"),
            ("opentelemetry,bsp_max_queue_size=lots", "lots"),
        ] {
            let error = parse(&[entry], &[]).unwrap_err();
            assert!(error.contains(needle), "{entry}: {error}");
        }
    }
}
