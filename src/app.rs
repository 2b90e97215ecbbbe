//! Wiring: binds the listener, starts loading the repository, serves gRPC (inference,
//! health, reflection), and runs the drain sequence on shutdown.

use std::{net::SocketAddr, sync::Arc};

use thiserror::Error;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Identity, ServerTlsConfig},
};
use tonic_health::{server::HealthReporter, ServingStatus};
use tracing::{info, warn};

use crate::{
    admission::ByteBudget,
    auth::RequireKey,
    backend::onnxruntime::library,
    config::{ServerConfig, TlsFiles},
    control::{ControlMode, ModelControl},
    grpc::{
        gate::Gate, pb, pb::grpc_inference_service_server::GrpcInferenceServiceServer,
        InferenceService,
    },
    inference::Inference,
    listener,
    metrics::{endpoint, saturation, Metrics},
    repository::{LoadSettings, Repository},
};

/// The service name health reports the whole server under, besides "".
pub const INFERENCE_SERVICE: &str = "inference.GRPCInferenceService";

/// A health entry that is SERVING for as long as the process answers at all: for liveness
/// probes, which must not restart a pod that is merely loading, draining or holding a
/// model that failed to load.
pub const LIVENESS_SERVICE: &str = "wharf.liveness";

/// Time allowed after the drain for connections to deliver the last answers and close.
const CONNECTION_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// HTTP/2 streams one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// HTTP/2 flow-control windows. hyper's 1 MiB per connection lets a client that
/// multiplexes its requests over one connection (tritonclient, `wharf bench`) have only
/// about five 184 KiB rec crops in flight: on an H200 rec's batches held 4 rows, not 8.
/// 16 MiB holds 64 such crops; requests are still charged against --max-inflight-bytes.
pub const HTTP2_STREAM_WINDOW: u32 = 4 << 20;
pub const HTTP2_CONNECTION_WINDOW: u32 = 16 << 20;
/// A connection silent this long is pinged, and closed if the ping is not answered in time.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

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
    #[error("TLS {what} {path}: {source}")]
    Tls {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// A listener on `addr` and the address it got (port 0 picks one).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), AppError> {
    let bound = |source| AppError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bound)?;
    let local = listener.local_addr().map_err(bound)?;
    Ok((listener, local))
}

/// The server's TLS identity from its PEM files.
fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, AppError> {
    let read = |what, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| AppError::Tls {
            what,
            path: path.display().to_string(),
            source,
        })
    };
    let identity = Identity::from_pem(read("certificate", &files.cert)?, read("key", &files.key)?);
    Ok(ServerTlsConfig::new().identity(identity))
}

/// A running server. Dropping it without `shutdown` leaves the server task running.
pub struct Server {
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    inference: Arc<Inference>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), AppError>>,
}

impl Server {
    /// Binds, starts serving at once (live, not yet ready) and loads models in the
    /// background; each model turns READY once warm.
    pub async fn start(config: ServerConfig) -> Result<Server, AppError> {
        let metrics = Metrics::new();
        // Explicit control loads only what --load-model names (with an ensemble's steps).
        let wanted = ModelControl::start_set(&config);
        let repository = Repository::scan_only(
            &config.model_repository,
            LoadSettings {
                onnxruntime_lib: library::locate(config.onnxruntime_lib.as_deref()),
                latency_objective: config.latency_objective,
                gpu_memory: config.gpu_memory.clone(),
                gpu_context_memory: config.gpu_context_memory,
                load_timeout: config.model_load_timeout,
            },
            Arc::clone(&metrics),
            |name| wanted.as_ref().is_none_or(|w| w.contains(name)),
        )
        .map_err(|source| AppError::Repository {
            path: config.model_repository.display().to_string(),
            source,
        })?;
        let repository = Arc::new(repository);
        let (listener, grpc_addr) = bind(config.grpc_addr).await?;
        let (metrics_listener, metrics_addr) = bind(config.metrics_addr).await?;
        // The runtime's own count, whoever built it (`wharf serve`, a test, an embedder).
        let runtime_threads = tokio::runtime::Handle::current().metrics().num_workers();
        info!(%grpc_addr, %metrics_addr, runtime_threads, repository = %config.model_repository.display(), "listening");
        // Metrics stay up through the drain, so the last answers are counted by a scrape.
        let (metrics_stop, metrics_stopped) = oneshot::channel::<()>();
        let inference = Arc::new(Inference::new(Arc::clone(&repository)));
        let probe = Arc::clone(&inference);
        let strict = config.strict_readiness;
        let metrics_task = tokio::spawn(endpoint::serve(
            metrics_listener,
            Arc::clone(&metrics),
            move || probe.server_ready(strict),
            async move {
                let _ = metrics_stopped.await;
            },
        ));
        let sampler = tokio::spawn(sample_saturation(Arc::clone(&repository), metrics));

        let loader = Arc::clone(&repository);
        let parallelism = config.load_parallelism;
        let runtime = tokio::runtime::Handle::current();
        let control = Arc::new(ModelControl::new(
            config.model_control,
            Arc::clone(&repository),
            runtime.clone(),
        ));
        let poller = (config.model_control == ControlMode::Poll)
            .then(|| (Arc::clone(&control), config.repository_poll));
        let poll_task = tokio::spawn(async move {
            let initial =
                tokio::task::spawn_blocking(move || loader.load_all(parallelism, &runtime));
            let _ = initial.await;
            crate::heap::release_freed();
            if let Some((control, every)) = poller {
                control.poll(every).await;
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
        tokio::spawn(follow_health(
            reporter,
            Arc::clone(&inference),
            config.strict_readiness,
        ));
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let budget = Arc::new(ByteBudget::new(config.max_inflight_bytes));
        let service = InferenceService::new(
            Arc::clone(&inference),
            config.max_request_bytes,
            config.strict_readiness,
            Arc::clone(&budget),
            control,
        );
        // Room for the largest request wharf accepts plus protobuf framing, so that an
        // oversized tensor reaches validation and gets a message that names it.
        let max_message = config
            .max_request_bytes
            .saturating_mul(2)
            .saturating_add(1 << 20);
        let inference_server = Gate::new(
            InterceptedService::new(
                GrpcInferenceServiceServer::new(service)
                    .max_decoding_message_size(max_message)
                    .max_encoding_message_size(usize::MAX),
                RequireKey(config.api_key.clone()),
            ),
            budget,
            Arc::clone(repository.metrics()),
        );
        // Bounds on what one connection can hold: streams open at once (each may pin an
        // answer its client does not read), and pings that find dead peers.
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW))
            .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW))
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
        if let Some(tls) = &config.tls {
            builder = builder.tls_config(tls_config(tls)?)?;
        }
        info!(
            tls = config.tls.is_some(),
            api_key = config.api_key.is_some(),
            "inference service protection"
        );

        let (stop, stopped) = oneshot::channel::<()>();
        let drain = Arc::clone(&inference);
        let exit_timeout = config.exit_timeout;
        let handshake_timeout = config.handshake_timeout;
        let watcher = Arc::clone(&inference);
        let mut closing = inference.draining();
        let task = tokio::spawn(async move {
            // 1. refuse new work (UNAVAILABLE, health NOT_SERVING) and let admitted work
            //    finish; 2. only then close connections (GOAWAY), so that requests arriving
            //    during the drain get a clear answer rather than a reset stream.
            let signal = async move {
                let _ = stopped.await;
                info!(
                    in_flight = drain.in_flight().count(),
                    "draining: refusing new requests, finishing those admitted"
                );
                drain.begin_drain();
                if !drain.in_flight().drained(exit_timeout).await {
                    warn!(
                        grace_secs = exit_timeout.as_secs(),
                        in_flight = drain.in_flight().count(),
                        "grace period over with requests still in flight"
                    );
                }
            };
            let incoming = listener::incoming(listener, handshake_timeout);
            let serve = builder
                .add_service(health)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(inference_server)
                .serve_with_incoming_shutdown(incoming, signal);
            let result = tokio::select! {
                result = serve => result.map_err(AppError::from),
                // Long-lived streams (health Watch) never end by themselves: once the work
                // is drained, give connections a moment to flush answers, then close.
                () = async {
                    let _ = closing.wait_for(|d| *d).await;
                    let _ = watcher.in_flight().drained(exit_timeout).await;
                    tokio::time::sleep(CONNECTION_FLUSH).await;
                } => Ok(()),
            };
            // Joins the worker threads once what they hold is done.
            let _ = tokio::task::spawn_blocking(move || repository.unload_all()).await;
            sampler.abort();
            poll_task.abort();
            let _ = metrics_stop.send(());
            let _ = metrics_task.await;
            info!("stopped");
            result
        });
        Ok(Server {
            grpc_addr,
            metrics_addr,
            inference,
            stop: Some(stop),
            task,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where /metrics is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Resolves once no model is LOADING any more.
    pub async fn loaded(&self) {
        let repository = self.inference.repository();
        let mut changes = repository.registry().subscribe();
        while !repository.registry().settled() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Drains and stops: health NOT_SERVING, new requests refused, admitted ones finished
    /// within the grace period, workers joined.
    pub async fn shutdown(mut self) -> Result<(), AppError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("server task does not panic")
    }
}

/// Samples every served model's backlog into its saturation gauge, and the largest into
/// the pod's; folds histogram samples into buckets now and then, scraped or not.
async fn sample_saturation(repository: Arc<Repository>, metrics: Arc<Metrics>) {
    const UPKEEP_EVERY: u64 = 100;
    let mut tick = tokio::time::interval(saturation::SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    for n in 1u64.. {
        tick.tick().await;
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

/// Keeps gRPC health in step with the models: "" and the inference service follow server
/// readiness, and each model name follows whether a version of it is READY.
async fn follow_health(reporter: HealthReporter, inference: Arc<Inference>, strict: bool) {
    let repository = Arc::clone(inference.repository());
    let mut changes = repository.registry().subscribe();
    let mut draining = inference.draining();
    loop {
        let serving = |up: bool| {
            if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        let drained = inference.is_draining();
        // Models first: whoever sees the server SERVING finds its models' states current.
        for row in repository.registry().index() {
            let up = !drained && repository.registry().is_ready(&row.name, "");
            reporter.set_service_status(&row.name, serving(up)).await;
        }
        let ready = inference.server_ready(strict);
        reporter
            .set_service_status(INFERENCE_SERVICE, serving(ready))
            .await;
        reporter.set_service_status("", serving(ready)).await;
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            changed = draining.changed() => if changed.is_err() { return },
        }
    }
}
