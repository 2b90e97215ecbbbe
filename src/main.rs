//! The `wharf` command: `serve` a model repository over gRPC, or `check` that it loads.

use std::{io::IsTerminal, net::IpAddr, path::PathBuf, process::ExitCode};

use anyhow::Context;
use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand, ValueEnum};
use wharf::{
    app::Server,
    auth::ApiKey,
    config::{ServerConfig, ServerFile},
    metrics::Metrics,
    repository::{LoadSettings, Repository, Status},
};

#[derive(Parser)]
#[command(
    name = "wharf",
    version,
    about = "A lightweight KServe v2 gRPC inference server"
)]
struct Cli {
    /// Log lines for people (text) or for log collectors (json).
    #[arg(long, global = true, env = "WHARF_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the model repository over gRPC until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Send load to a KServe v2 gRPC server and report throughput, latency and errors.
    Bench(wharf::loadgen::BenchArgs),
    /// Time single ONNX Runtime calls in-process, batch sizes in a chosen order (JSON out).
    #[cfg(feature = "onnxruntime")]
    EngineCalls(wharf::backend::probe::EngineCallsArgs),
    /// Load and warm every model, print each one's state, exit 1 if any failed.
    Check {
        #[arg(long, env = "WHARF_MODEL_REPOSITORY", default_value = "models")]
        model_repository: PathBuf,
        /// The ONNX Runtime library for backend onnxruntime
        #[arg(long, env = "ORT_DYLIB_PATH")]
        onnxruntime_lib: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Folder of models [default: models]
    #[arg(long, env = "WHARF_MODEL_REPOSITORY")]
    model_repository: Option<PathBuf>,
    /// gRPC port; 0 picks a free one (logged) [default: 8001]
    #[arg(long, env = "WHARF_GRPC_PORT")]
    grpc_port: Option<u16>,
    /// Metrics port [default: 8002]
    #[arg(long, env = "WHARF_METRICS_PORT")]
    metrics_port: Option<u16>,
    /// Address to listen on [default: 0.0.0.0]
    #[arg(long, env = "WHARF_HOST")]
    host: Option<IpAddr>,
    /// Server settings in YAML; flags and WHARF_* variables override it.
    #[arg(long, env = "WHARF_CONFIG")]
    config: Option<PathBuf>,
    /// Seconds a drain may take before exiting with requests in flight [default: 30]
    #[arg(long, env = "WHARF_EXIT_TIMEOUT_SECS")]
    exit_timeout_secs: Option<u64>,
    /// Tensor data one request may carry, such as 64MiB [default: 64MiB]
    #[arg(long, env = "WHARF_MAX_REQUEST_SIZE")]
    max_request_size: Option<ByteSize>,
    /// Request bytes all requests in flight may hold together; past it a request is
    /// RESOURCE_EXHAUSTED before its bytes are read [default: 1GiB]
    #[arg(long, env = "WHARF_MAX_INFLIGHT_BYTES")]
    max_inflight_bytes: Option<ByteSize>,
    /// Seconds one model version may take to load and warm before it is UNAVAILABLE
    /// [default: 120]
    #[arg(long, env = "WHARF_MODEL_LOAD_TIMEOUT_SECS")]
    model_load_timeout_secs: Option<u64>,
    /// Seconds a new connection may take to send its first bytes [default: 10]
    #[arg(long, env = "WHARF_HANDSHAKE_TIMEOUT_SECS")]
    handshake_timeout_secs: Option<u64>,
    /// Ready only when every model is READY [default: true]
    #[arg(long, env = "WHARF_STRICT_READINESS")]
    strict_readiness: Option<bool>,
    /// The ONNX Runtime library (libonnxruntime.so.1.31.x) for backend onnxruntime
    #[arg(long, env = "ORT_DYLIB_PATH")]
    onnxruntime_lib: Option<PathBuf>,
    /// Answer time the saturation metric is measured against, in ms [default: 100]
    #[arg(long, env = "WHARF_LATENCY_OBJECTIVE_MS")]
    latency_objective_ms: Option<u64>,
    /// A file holding the API key inference RPCs must carry as `authorization: Bearer
    /// <key>` (or the key itself in WHARF_API_KEY); health and reflection stay open
    #[arg(long, env = "WHARF_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// TLS certificate chain (PEM); with --tls-key, gRPC is served over TLS
    #[arg(long, env = "WHARF_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, env = "WHARF_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Memory of a GPU for the per-device budget check, as INDEX=SIZE (0=4GiB); repeat
    /// per GPU. Without it the NVIDIA driver (NVML) is asked.
    #[arg(long = "gpu-memory", value_parser = parse_gpu_memory)]
    gpu_memory: Vec<(u32, ByteSize)>,
    /// GPU memory the process holds before any arena (CUDA context, cuDNN, cuBLAS),
    /// counted once per device in the budget check [default: 640MiB]
    #[arg(long, env = "WHARF_GPU_CONTEXT_MEMORY")]
    gpu_context_memory: Option<ByteSize>,
    /// What may change the loaded models while serving: none (what start-up loaded),
    /// explicit (RepositoryModelLoad/Unload; --load-model at start), poll (the repository
    /// rescanned every --repository-poll-secs) [default: none]
    #[arg(long, env = "WHARF_MODEL_CONTROL_MODE", value_enum)]
    model_control_mode: Option<wharf::control::ControlMode>,
    /// Explicit mode: a model to load at start; repeat it, or `*` for all
    #[arg(long = "load-model")]
    load_model: Vec<String>,
    /// Poll mode: seconds between scans of the repository [default: 15]
    #[arg(long, env = "WHARF_REPOSITORY_POLL_SECS")]
    repository_poll_secs: Option<u64>,
    /// Threads of the async runtime that serve gRPC, metrics and batching; engine
    /// instances compute on threads of their own [default: half the CPUs, at least 1]
    #[arg(long, env = "WHARF_RUNTIME_THREADS")]
    runtime_threads: Option<usize>,
}

fn parse_gpu_memory(s: &str) -> Result<(u32, ByteSize), String> {
    let (index, size) = s
        .split_once('=')
        .ok_or("expected INDEX=SIZE, such as 0=4GiB")?;
    let index = index
        .trim()
        .parse()
        .map_err(|e| format!("GPU index {index}: {e}"))?;
    let size = size
        .trim()
        .parse()
        .map_err(|e| format!("size {size}: {e}"))?;
    Ok((index, size))
}

impl ServeArgs {
    fn resolve(self) -> anyhow::Result<ServerConfig> {
        let file = match &self.config {
            Some(path) => ServerFile::read(path).map_err(anyhow::Error::msg)?,
            None => ServerFile::default(),
        };
        let overrides = ServerFile {
            model_repository: self.model_repository,
            host: self.host,
            grpc_port: self.grpc_port,
            metrics_port: self.metrics_port,
            exit_timeout_secs: self.exit_timeout_secs,
            max_request_size: self.max_request_size,
            max_inflight_bytes: self.max_inflight_bytes,
            model_load_timeout_secs: self.model_load_timeout_secs,
            handshake_timeout_secs: self.handshake_timeout_secs,
            strict_readiness: self.strict_readiness,
            onnxruntime_lib: self.onnxruntime_lib,
            latency_objective_ms: self.latency_objective_ms,
            api_key_file: self.api_key_file,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            gpu_memory: (!self.gpu_memory.is_empty())
                .then(|| self.gpu_memory.into_iter().collect()),
            gpu_context_memory: self.gpu_context_memory,
            model_control_mode: self.model_control_mode,
            load_model: (!self.load_model.is_empty()).then_some(self.load_model),
            repository_poll_secs: self.repository_poll_secs,
            runtime_threads: self.runtime_threads,
        };
        let mut config = file.resolve(overrides).map_err(anyhow::Error::msg)?;
        // The key as a variable (from a Secret through env), never as a flag: flags show
        // in `ps`.
        if let Ok(key) = std::env::var("WHARF_API_KEY") {
            if config.api_key.is_some() {
                anyhow::bail!("WHARF_API_KEY and an API key file are both set; keep one");
            }
            config.api_key = Some(ApiKey::new(&key).map_err(anyhow::Error::msg)?);
        }
        Ok(config)
    }
}

fn main() -> ExitCode {
    wharf::heap::tune();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check {
            model_repository,
            onnxruntime_lib,
        } => check(model_repository, onnxruntime_lib),
        Command::Bench(args) => bench(args),
        #[cfg(feature = "onnxruntime")]
        Command::EngineCalls(args) => wharf::backend::probe::run(&args).map(|report| {
            println!("{}", serde_json::to_string(&report).expect("serialisable"));
            ExitCode::SUCCESS
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WHARF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    // Engine panics are caught and answered; each is logged once, here, in the log's own
    // format (the default hook would write a second, unstructured copy).
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), "{info}");
    }));
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = args.resolve()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime_threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = Server::start(config).await?;
        shutdown_signal().await;
        server.shutdown().await?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

fn bench(args: wharf::loadgen::BenchArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime.block_on(wharf::loadgen::run(args))?;
    report.print(json);
    Ok(ExitCode::SUCCESS)
}

fn check(model_repository: PathBuf, onnxruntime_lib: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let settings = LoadSettings {
        onnxruntime_lib: wharf::backend::onnxruntime::library::locate(onnxruntime_lib.as_deref()),
        ..LoadSettings::default()
    };
    let repository = Repository::scan(&model_repository, settings, Metrics::new())
        .with_context(|| format!("reading model repository {}", model_repository.display()))?;
    // Schedulers are tokio tasks even when nothing is served.
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    repository.load_all(
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        runtime.handle(),
    );
    let rows = repository.registry().index();
    let mut failed = false;
    for row in &rows {
        failed |= row.status != Some(Status::Ready);
        let version = if row.version.is_empty() {
            "-"
        } else {
            &row.version
        };
        println!(
            "{:<24} {:<8} {:<12} {}",
            row.name,
            version,
            row.status.map_or("", |s| s.as_str()),
            row.reason
        );
    }
    repository.unload_all();
    if rows.is_empty() {
        println!("no models in {}", model_repository.display());
        return Ok(ExitCode::FAILURE);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
