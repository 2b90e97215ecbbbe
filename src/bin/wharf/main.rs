//! The `wharf` command: `serve` a model repository, `check` that it loads, or print its
//! effective `config`.

mod bench;
mod config_cmd;
#[cfg(feature = "onnxruntime")]
mod engine_calls;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use wharf::{
    app::Server,
    config::{LoadConfig, ServerConfig},
    logging::LogFormat,
    metrics::Metrics,
    repository::{Repository, Status},
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

#[derive(Subcommand)]
enum Command {
    /// Serve the model repository over gRPC until SIGTERM or SIGINT.
    Serve(Box<ServeArgs>),
    /// Send load to a KServe v2 gRPC server and report throughput, latency and errors.
    Bench(bench::BenchArgs),
    /// Time single ONNX Runtime calls in-process, batch sizes in a chosen order (JSON out).
    #[cfg(feature = "onnxruntime")]
    EngineCalls(engine_calls::EngineCallsArgs),
    /// Load and warm every model, print each one's state, exit 1 if any failed.
    Check(LoadConfig),
    /// Print each model's effective config (Triton's text format, YAML or JSON), or write
    /// them out to convert a repository; exit 1 listing every config that cannot serve.
    Config(config_cmd::ConfigArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Server settings in YAML (each key a setting's name, docs/configuration.md); flags
    /// and variables override it
    #[arg(long, env = "WHARF_CONFIG")]
    config: Option<PathBuf>,
    /// Parsed here for `--help` and for errors; `ServerConfig::resolve` reads them again
    /// with the file under them.
    #[command(flatten)]
    #[allow(dead_code)]
    settings: ServerConfig,
}

fn main() -> ExitCode {
    wharf::heap::tune();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Check(load) => check(load),
        Command::Config(args) => config_cmd::run(&args),
        Command::Bench(args) => bench(args),
        #[cfg(feature = "onnxruntime")]
        Command::EngineCalls(args) => engine_calls::run(&args).map(|report| {
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
    wharf::logging::init(format);
    // Engine panics are caught and answered; each is logged once, here, in the log's own
    // format (the default hook would write a second, unstructured copy).
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), "{info}");
    }));
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Parsed again with the defaults off: what the flags and variables set beats the file.
    let given = ServerConfig::given_only(Cli::command()).get_matches();
    let serve = given.subcommand_matches("serve").expect("serving");
    let config =
        ServerConfig::resolve(args.config.as_deref(), serve).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.runtime_threads())
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

fn bench(args: bench::BenchArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime.block_on(bench::run(args))?;
    report.print(json);
    Ok(ExitCode::SUCCESS)
}

fn check(mut settings: LoadConfig) -> anyhow::Result<ExitCode> {
    settings.onnxruntime_lib =
        wharf::backend::onnxruntime::library::locate(settings.onnxruntime_lib.as_deref());
    let model_repository = settings.model_repository.clone();
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
