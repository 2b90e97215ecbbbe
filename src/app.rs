//! Wiring: binds the listener, starts loading the repository, serves gRPC (inference,
//! health, reflection), and runs the drain sequence on shutdown.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use thiserror::Error;
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::service::{interceptor::InterceptedService, Routes};
use tonic_health::{server::HealthReporter, ServingStatus};

use tracing::{info, warn};

use crate::{
    admission::ByteBudget,
    auth::RequireKey,
    backend::onnxruntime::library,
    config::ServerConfig,
    control::{ControlMode, ModelControl},
    grpc::{
        gate::Gate, pb, pb::grpc_inference_service_server::GrpcInferenceServiceServer,
        InferenceService,
    },
    http::HttpApi,
    inference::Inference,
    listener,
    metrics::{endpoint, saturation, Metrics},
    repository::Repository,
    shared_memory::SharedMemory,
    shutdown::Drain,
    trace::{TraceConfig, Tracing},
};

/// The service name health reports the whole server under, besides "".
pub const INFERENCE_SERVICE: &str = "inference.GRPCInferenceService";

/// A health entry that is SERVING for as long as the process answers at all: for liveness
/// probes, which must not restart a pod that is merely loading, draining or holding a
/// model that failed to load.
pub const LIVENESS_SERVICE: &str = "wharf.liveness";

/// Time allowed after the drain for connections to deliver the last answers and close.
const CONNECTION_FLUSH: Duration = Duration::from_secs(1);

/// HTTP/2 streams one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// HTTP/2 flow-control windows. hyper's 1 MiB per connection lets a client that
/// multiplexes its requests over one connection (tritonclient, `wharf bench`) have only
/// about five 184 KiB rec crops in flight: on an H200 rec's batches held 4 rows, not 8.
/// 16 MiB holds 64 such crops; requests are still charged against --max-inflight-bytes.
pub const HTTP2_STREAM_WINDOW: u32 = 4 << 20;
pub const HTTP2_CONNECTION_WINDOW: u32 = 16 << 20;
/// A connection silent this long is pinged, and closed if the ping is not answered in time.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Error)]
pub enum AppError {
    #[error("model repository {path}: {source}")]
    Repository {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("tracing: {0}")]
    Trace(String),
}

/// A listener on `addr` and the address it got (port 0 picks one).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), AppError> {
    let bound = |source| AppError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bound)?;
    let local = listener.local_addr().map_err(bound)?;
    Ok((listener, local))
}

/// A server built and bound but not yet running: everything that can fail (reading the
/// repository, binding, TLS files, reflection) has, and nothing has started.
pub struct App {
    config: ServerConfig,
    repository: Arc<Repository>,
    grpc: (TcpListener, SocketAddr),
    metrics: (TcpListener, SocketAddr),
    http: (TcpListener, SocketAddr),
    /// HTTP's TLS, where TLS is on (gRPC's is in `transport`).
    http_tls: Option<tokio_rustls::TlsAcceptor>,
    transport: tonic::transport::Server,
    /// Server reflection, v1 and v1alpha.
    reflection: Routes,
    tracing: Arc<Tracing>,
}

impl App {
    /// Reads the repository's folders (no model is loaded yet), binds both ports and
    /// prepares the transport.
    pub async fn build(mut config: ServerConfig) -> Result<App, AppError> {
        config.load.onnxruntime_lib = library::locate(config.load.onnxruntime_lib.as_deref());
        // Explicit control loads only what --load-model names (with an ensemble's steps).
        let wanted = ModelControl::start_set(&config);
        let root = config.load.model_repository.clone();
        let repository =
            Repository::scan_only(&root, config.load.clone(), Metrics::new(), |name| {
                wanted.as_ref().is_none_or(|w| w.contains(name))
            })
            .map_err(|source| AppError::Repository {
                path: root.display().to_string(),
                source,
            })?;
        let trace_config =
            TraceConfig::parse(&config.tracing.trace_config, |key| std::env::var(key).ok())
                .map_err(AppError::Trace)?;
        let tracing = Tracing::from_config(&trace_config, Some(repository.metrics().trace_spans()))
            .map_err(AppError::Trace)?;
        let grpc = bind(config.listen.grpc_addr()).await?;
        let metrics = bind(config.listen.metrics_addr()).await?;
        let http = bind(config.listen.http_addr()).await?;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection =
            Routes::new(reflection().build_v1()?).add_service(reflection().build_v1alpha()?);
        // Bounds on what one connection can hold: streams open at once (each may pin an
        // answer its client does not read), and pings that find dead peers.
        let mut transport = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW))
            .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW))
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
        let mut http_tls = None;
        if let Some(tls) = config.listen.tls() {
            transport = transport.tls_config(crate::tls::tls_config(&tls)?)?;
            http_tls = Some(crate::tls::http_tls_acceptor(&tls)?);
        }
        Ok(App {
            config,
            repository: Arc::new(repository),
            grpc,
            metrics,
            http,
            http_tls,
            transport,
            reflection,
            tracing: Arc::new(tracing),
        })
    }

    /// Starts serving at once (live, not yet ready) and loads models in the background;
    /// each model turns READY once warm. Every task it starts is spawned through one
    /// drain handle, which `Server::shutdown` signals and joins.
    pub async fn spawn(self) -> Server {
        let App {
            config,
            repository,
            grpc: (listener, grpc_addr),
            metrics: (metrics_listener, metrics_addr),
            http: (http_listener, http_addr),
            http_tls,
            mut transport,
            reflection,
            tracing,
        } = self;
        let drain = Drain::default();
        let metrics = Arc::clone(repository.metrics());
        // The runtime's own count, whoever built it (`wharf serve`, a test, an embedder).
        let runtime_threads = tokio::runtime::Handle::current().metrics().num_workers();
        // Threads follow the CPUs the process may use (affinity and cgroup quota), which
        // a pod limited to one CPU on a 64-core node sees as 1.
        let (cpus, load_parallelism) =
            (crate::cpus::available(), config.runtime.load_parallelism());
        info!(%grpc_addr, %metrics_addr, %http_addr, cpus, runtime_threads, load_parallelism, purge_delay_ms = crate::heap::purge_delay_ms(), repository = %config.load.model_repository.display(), "listening");
        let inference = Arc::new(Inference::new(
            Arc::clone(&repository),
            drain.clone(),
            tracing,
        ));
        let strict = config.control.strict_readiness;
        let exit_timeout = config.limits.exit_timeout;

        // Metrics stay up until the admitted requests are answered, so that a scrape
        // counts the last answers.
        let (probe, last) = (Arc::clone(&inference), Arc::clone(&inference));
        let stop_metrics = async move {
            last.drain().signaled().await;
            last.in_flight().drained(exit_timeout).await;
        };
        let endpoint = endpoint::serve(
            metrics_listener,
            Arc::clone(&metrics),
            move || probe.server_ready(strict),
            stop_metrics,
        );
        drain.spawn(async move {
            if let Err(e) = endpoint.await {
                warn!(error = %e, "the metrics endpoint stopped");
            }
        });
        drain.spawn(sample_saturation(
            Arc::clone(&repository),
            metrics,
            drain.clone(),
        ));

        let runtime = tokio::runtime::Handle::current();
        let control = Arc::new(ModelControl::new(
            config.control.model_control_mode,
            Arc::clone(&repository),
            runtime.clone(),
            config.runtime.load_parallelism(),
        ));
        let poller = (config.control.model_control_mode == ControlMode::Poll)
            .then(|| (Arc::clone(&control), config.control.repository_poll));
        let (loader, parallelism, signal) = (
            Arc::clone(&repository),
            config.runtime.load_parallelism(),
            drain.clone(),
        );
        drain.spawn(async move {
            let initial =
                tokio::task::spawn_blocking(move || loader.load_all(parallelism, &runtime));
            tokio::select! {
                _ = initial => crate::heap::release_freed(),
                () = signal.signaled() => return,
            }
            if let Some((control, every)) = poller {
                tokio::select! {
                    () = control.poll(every) => {}
                    () = signal.signaled() => {}
                }
            }
        });

        let (reporter, health) = tonic_health::server::health_reporter();
        // tonic-health starts "" as SERVING; nothing is ready before the first model is.
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        reporter
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
        drain.spawn(follow_health(reporter, Arc::clone(&inference), strict));

        let limits = &config.limits;
        let budget = Arc::new(ByteBudget::new(limits.max_inflight_bytes()));
        let max_request_bytes = limits.max_request_bytes();
        let service = InferenceService::new(
            Arc::clone(&inference),
            max_request_bytes,
            strict,
            Arc::clone(&budget),
            control,
            Arc::new(SharedMemory::new(
                limits.allow_client_shm,
                limits.client_shm_limit,
                Arc::clone(&budget),
            )),
        );
        // Room for the largest request wharf accepts plus protobuf framing, so that an
        // oversized tensor reaches validation and gets a message that names it.
        let max_message = max_request_bytes.saturating_mul(2).saturating_add(1 << 20);
        let api = Arc::new(HttpApi {
            service: service.clone(),
            key: RequireKey(config.listen.api_key.clone()),
            budget: Arc::clone(&budget),
        });
        let last = Arc::clone(&inference);
        // As gRPC: new requests are refused once the drain starts; connections close once
        // the admitted ones are answered.
        let stop = async move {
            last.drain().signaled().await;
            last.in_flight().drained(exit_timeout).await;
        };
        drain.spawn(crate::http::serve(
            http_listener,
            crate::http::router(api),
            http_tls,
            config.listen.handshake_timeout,
            stop,
        ));
        let inference_server = Gate::new(
            InterceptedService::new(
                GrpcInferenceServiceServer::new(service)
                    .max_decoding_message_size(max_message)
                    .max_encoding_message_size(usize::MAX),
                RequireKey(config.listen.api_key.clone()),
            ),
            budget,
            Arc::clone(repository.metrics()),
        );
        info!(
            tls = config.listen.tls().is_some(),
            api_key = config.listen.api_key.is_some(),
            "inference service protection"
        );

        let handshake_timeout = config.listen.handshake_timeout;
        let (waiter, closer) = (Arc::clone(&inference), Arc::clone(&inference));
        // 1. refuse new work (UNAVAILABLE, health NOT_SERVING) and let admitted work
        //    finish; 2. only then close connections (GOAWAY), so that requests arriving
        //    during the drain get a clear answer rather than a reset stream.
        let signal = async move {
            waiter.drain().signaled().await;
            info!(
                in_flight = waiter.in_flight().count(),
                "draining: refusing new requests, finishing those admitted"
            );
            if !waiter.in_flight().drained(exit_timeout).await {
                warn!(
                    grace_secs = exit_timeout.as_secs(),
                    in_flight = waiter.in_flight().count(),
                    "grace period over with requests still in flight"
                );
            }
        };
        let serve = transport
            .add_routes(reflection)
            .add_service(health)
            .add_service(inference_server)
            .serve_with_incoming_shutdown(
                listener::incoming(listener, handshake_timeout, listener::PREFACE_BYTES),
                signal,
            );
        let serving = drain.spawn(async move {
            let result = tokio::select! {
                result = serve => result.map_err(AppError::from),
                // Long-lived streams (health Watch) never end by themselves: once the work
                // is drained, give connections a moment to flush answers, then close.
                () = async {
                    closer.drain().signaled().await;
                    closer.in_flight().drained(exit_timeout).await;
                    tokio::time::sleep(CONNECTION_FLUSH).await;
                } => Ok(()),
            };
            // Joins the worker threads once what they hold is done.
            let _ = tokio::task::spawn_blocking(move || repository.unload_all()).await;
            result
        });
        Server {
            grpc_addr,
            metrics_addr,
            http_addr,
            inference,
            exit_timeout,
            serving,
        }
    }
}

/// A running server. Dropping it without `shutdown` leaves its tasks running.
pub struct Server {
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    http_addr: SocketAddr,
    inference: Arc<Inference>,
    exit_timeout: Duration,
    serving: JoinHandle<Result<(), AppError>>,
}

impl Server {
    /// Builds the app and spawns it.
    pub async fn start(config: ServerConfig) -> Result<Server, AppError> {
        Ok(App::build(config).await?.spawn().await)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where /metrics is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Where HTTP/REST is served.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Resolves once the start-up load has finished and no model is LOADING any more.
    /// Both: the last model turns READY a moment before the start-up load is marked done,
    /// and readiness waits for that mark.
    pub async fn loaded(&self) {
        let repository = self.inference.repository();
        let mut changes = repository.registry().subscribe();
        while !(repository.registry().started() && repository.registry().settled()) {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Drains and stops: health NOT_SERVING, new requests refused, admitted ones finished
    /// within the grace period, workers joined, then every background task joined.
    pub async fn shutdown(self) -> Result<(), AppError> {
        let drain = self.inference.drain().clone();
        drain.start();
        let result = self.serving.await.expect("the serve task does not panic");
        if !drain.joined(self.exit_timeout).await {
            warn!("background tasks still running at exit");
        }
        // The last spans go out (the exporter waits a bounded time for the collector).
        let inference = Arc::clone(&self.inference);
        let _ = tokio::task::spawn_blocking(move || inference.tracing().shutdown()).await;
        info!("stopped");
        result
    }
}

/// Samples every served model's backlog into its saturation gauge, and the largest into
/// the pod's; folds histogram samples into buckets now and then, scraped or not.
async fn sample_saturation(repository: Arc<Repository>, metrics: Arc<Metrics>, drain: Drain) {
    const UPKEEP_EVERY: u64 = 100;
    let mut tick = tokio::time::interval(saturation::SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    for n in 1u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            () = drain.signaled() => return,
        }
        let now = tokio::time::Instant::now();
        let elapsed = now - last;
        last = now;
        let pod = repository
            .registry()
            .served(None)
            .iter()
            .map(|model| {
                let value = model.stats.backlog.sample(elapsed);
                model.stats.metrics.saturation.set(value);
                value
            })
            .fold(0.0, f64::max);
        metrics.set_saturation(pod);
        if n % UPKEEP_EVERY == 0 {
            metrics.upkeep();
        }
    }
}

/// Sets a service's health only when it changes: the health protocol's Watch sends a message
/// per change of status, so a registry change that leaves a service as it was repeats nothing.
async fn set_health(
    reporter: &HealthReporter,
    last: &mut HashMap<String, bool>,
    service: &str,
    up: bool,
) {
    if last.insert(service.to_owned(), up) == Some(up) {
        return;
    }
    let status = if up {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status(service, status).await;
}

/// Keeps gRPC health in step with the models: "" and the inference service follow server
/// readiness, and each model name follows whether a version of it is READY.
async fn follow_health(reporter: HealthReporter, inference: Arc<Inference>, strict: bool) {
    let repository = Arc::clone(inference.repository());
    let mut changes = repository.registry().subscribe();
    let drain = inference.drain().clone();
    // Seeded with what `serve` set "" to before this task started.
    let mut last = HashMap::from([(String::new(), false)]);
    loop {
        let drained = inference.is_draining();
        // Models first: whoever sees the server SERVING finds its models' states current.
        for row in repository.registry().index() {
            let up = !drained && repository.registry().is_ready(&row.name, "");
            set_health(&reporter, &mut last, &row.name, up).await;
        }
        let ready = inference.server_ready(strict);
        set_health(&reporter, &mut last, INFERENCE_SERVICE, ready).await;
        set_health(&reporter, &mut last, "", ready).await;
        if drained {
            return;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = drain.signaled() => {}
        }
    }
}
