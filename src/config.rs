//! The server's settings, each declared once: its flag, `WHARF_*` variable, YAML key (the
//! flag's id), doc and default sit on one field, grouped by the subsystem that reads it.
//! Defaults < the `--config` YAML file < variables and flags.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use bytesize::ByteSize;
use clap::{ArgAction, ArgMatches, Args, Command, FromArgMatches};
use serde::Deserialize;

use crate::auth::ApiKey;

/// What may change the loaded models while serving (Triton's --model-control-mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ControlMode {
    /// Every model at start; no changes after.
    #[default]
    None,
    /// The repository rescanned every --repository-poll-secs; changes applied.
    Poll,
    /// `--load-model` at start, then what RepositoryModelLoad / Unload ask.
    Explicit,
}

impl ControlMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlMode::None => "none",
            ControlMode::Poll => "poll",
            ControlMode::Explicit => "explicit",
        }
    }
}

/// Every setting of `wharf serve`, by subsystem.
#[derive(Debug, Clone, PartialEq, Args, Deserialize)]
pub struct ServerConfig {
    #[command(flatten)]
    #[serde(flatten)]
    pub listen: ListenConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    #[serde(flatten)]
    pub load: LoadConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub control: ControlConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub runtime: RuntimeConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub tracing: TracingConfig,
}

/// Where and how clients connect.
#[derive(Debug, Clone, PartialEq, Args, Deserialize)]
#[serde(default)]
pub struct ListenConfig {
    /// Address to listen on
    #[arg(long, env = "WHARF_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// gRPC port; 0 picks a free one (logged)
    #[arg(long, env = "WHARF_GRPC_PORT", default_value_t = 8001)]
    pub grpc_port: u16,
    /// Port of /metrics, /live and /ready
    #[arg(long, env = "WHARF_METRICS_PORT", default_value_t = 8002)]
    pub metrics_port: u16,
    /// HTTP/REST port (KServe v2 with Triton's routes); 0 picks a free one (logged)
    #[arg(long, env = "WHARF_HTTP_PORT", default_value_t = 8000)]
    pub http_port: u16,
    /// Seconds a new connection may take to send its first bytes (the HTTP/2 preface or
    /// a TLS hello) before it is closed
    #[arg(long = "handshake-timeout-secs", id = "handshake_timeout_secs", env = "WHARF_HANDSHAKE_TIMEOUT_SECS", default_value = "10", value_parser = parse_secs)]
    #[serde(rename = "handshake_timeout_secs", deserialize_with = "de_secs")]
    pub handshake_timeout: Duration,
    /// A file holding the API key inference RPCs must carry as `authorization: Bearer
    /// <key>` (or the key itself in WHARF_API_KEY, never a flag); health and reflection
    /// stay open
    #[arg(long, env = "WHARF_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// TLS certificate chain (PEM); with --tls-key, gRPC and HTTP are served over TLS
    #[arg(long, env = "WHARF_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, env = "WHARF_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The key read from `api_key_file` or WHARF_API_KEY when the settings are resolved.
    #[arg(skip)]
    #[serde(skip)]
    pub api_key: Option<ApiKey>,
}

/// What one request, and all of them together, may hold, and how long a drain may take.
#[derive(Debug, Clone, PartialEq, Args, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Tensor data one request may carry; larger requests are INVALID_ARGUMENT
    #[arg(long, env = "WHARF_MAX_REQUEST_SIZE", default_value = "64MiB")]
    pub max_request_size: ByteSize,
    /// Request bytes all requests in flight may hold together; past it a request is
    /// RESOURCE_EXHAUSTED before its bytes are read
    #[arg(long, env = "WHARF_MAX_INFLIGHT_BYTES", default_value = "1GiB")]
    pub max_inflight_bytes: ByteSize,
    /// Seconds a drain may take before the process exits with requests in flight
    #[arg(long = "exit-timeout-secs", id = "exit_timeout_secs", env = "WHARF_EXIT_TIMEOUT_SECS", default_value = "30", value_parser = parse_secs)]
    #[serde(rename = "exit_timeout_secs", deserialize_with = "de_secs")]
    pub exit_timeout: Duration,
    /// Let co-located clients register POSIX shared-memory regions for inputs and
    /// outputs (Triton's --allow-client-shm); off, registering is UNIMPLEMENTED
    #[arg(long, env = "WHARF_ALLOW_CLIENT_SHM", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub allow_client_shm: bool,
    /// Bytes all registered shared-memory regions may span together
    #[arg(long, env = "WHARF_CLIENT_SHM_LIMIT", default_value = "1GiB")]
    pub client_shm_limit: ByteSize,
}

/// What loading models needs beyond their folders.
#[derive(Debug, Clone, PartialEq, Args, Deserialize)]
#[serde(default)]
pub struct LoadConfig {
    /// Folder of models
    #[arg(long, env = "WHARF_MODEL_REPOSITORY", default_value = "models")]
    pub model_repository: PathBuf,
    /// The ONNX Runtime library (libonnxruntime.so.1.31.x) for backend onnxruntime; else
    /// beside the binary, else $XDG_DATA_HOME/wharf/onnxruntime
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub onnxruntime_lib: Option<PathBuf>,
    /// Seconds one model version may take to load and warm before it is UNAVAILABLE
    #[arg(long = "model-load-timeout-secs", id = "model_load_timeout_secs", env = "WHARF_MODEL_LOAD_TIMEOUT_SECS", default_value = "120", value_parser = parse_secs)]
    #[serde(rename = "model_load_timeout_secs", deserialize_with = "de_secs")]
    pub model_load_timeout: Duration,
    /// Answer time the saturation metric is measured against, in ms; a model's
    /// `latency_objective_ms` parameter overrides it
    #[arg(long = "latency-objective-ms", id = "latency_objective_ms", env = "WHARF_LATENCY_OBJECTIVE_MS", default_value = "100", value_parser = parse_millis)]
    #[serde(rename = "latency_objective_ms", deserialize_with = "de_millis")]
    pub latency_objective: Duration,
    /// Memory of a GPU for the per-device budget check, as INDEX=SIZE (0=4GiB; in YAML a
    /// map {0: 4GiB}); repeat per GPU. Without it the NVIDIA driver (NVML) is asked
    #[arg(long, value_parser = parse_gpu_memory)]
    #[serde(deserialize_with = "de_gpu_memory")]
    pub gpu_memory: Vec<(u32, ByteSize)>,
    /// GPU memory the process holds before any arena (CUDA context, cuDNN, cuBLAS),
    /// counted once per device in the budget check (measured on an H200: 2 sessions of 10
    /// MiB arenas held 846 MiB, about 140 MiB of it per session)
    #[arg(long, env = "WHARF_GPU_CONTEXT_MEMORY", default_value = "640MiB")]
    pub gpu_context_memory: ByteSize,
    /// Read each model's config from configs/<NAME>.pbtxt in its folder where that file
    /// exists, else its config.pbtxt or config.yaml (Triton's --model-config-name)
    #[arg(long, env = "WHARF_MODEL_CONFIG_NAME")]
    pub model_config_name: Option<String>,
    /// Serve each model as its config declares it, with nothing filled from the ONNX graph:
    /// every input and output must be listed, and max_batch_size is 0 unless given
    /// (Triton's --disable-auto-complete-config)
    #[arg(long, env = "WHARF_DISABLE_AUTO_COMPLETE_CONFIG")]
    pub disable_auto_complete_config: bool,
}

/// What changes the loaded models while serving, and when the server is ready.
#[derive(Debug, Clone, PartialEq, Args, Deserialize)]
#[serde(default)]
pub struct ControlConfig {
    /// What may change the loaded models while serving: none (what start-up loaded),
    /// explicit (RepositoryModelLoad/Unload; --load-model at start), poll (the repository
    /// rescanned every --repository-poll-secs)
    #[arg(
        long,
        env = "WHARF_MODEL_CONTROL_MODE",
        value_enum,
        default_value = "none"
    )]
    pub model_control_mode: ControlMode,
    /// Explicit mode: a model to load at start; repeat it, or `*` for all
    #[arg(long)]
    pub load_model: Vec<String>,
    /// Poll mode: seconds between scans of the repository (Triton's default)
    #[arg(long = "repository-poll-secs", id = "repository_poll_secs", env = "WHARF_REPOSITORY_POLL_SECS", default_value = "15", value_parser = parse_secs)]
    #[serde(rename = "repository_poll_secs", deserialize_with = "de_secs")]
    pub repository_poll: Duration,
    /// Ready only when every model is READY (Triton's default; a version loading beside a
    /// READY one counts, so a swap keeps the server ready); otherwise once the start-up
    /// load has finished, whatever failed, and loads after it leave it ready
    #[arg(long, env = "WHARF_STRICT_READINESS", default_value_t = true, action = ArgAction::Set)]
    pub strict_readiness: bool,
}

/// Threads: the async runtime's and the loaders'.
#[derive(Debug, Clone, PartialEq, Args, Deserialize)]
#[serde(default)]
pub struct RuntimeConfig {
    /// Threads of the async runtime that serve gRPC, metrics and batching; engine
    /// instances compute on threads of their own [default: half the CPUs, at least 1]
    #[arg(long, env = "WHARF_RUNTIME_THREADS")]
    pub runtime_threads: Option<usize>,
    /// Models loaded at once at start-up [default: twice the CPUs]
    #[arg(long, env = "WHARF_LOAD_PARALLELISM")]
    pub load_parallelism: Option<usize>,
}

/// OpenTelemetry traces, in Triton's `--trace-config` form (docs/tracing.md).
#[derive(Debug, Clone, PartialEq, Args, Deserialize)]
#[serde(default)]
pub struct TracingConfig {
    /// A trace setting as Triton's: `rate=N` (one request in N without a caller's trace
    /// context; default 1000), `count=N` (-1: no limit), `level=OFF|TIMESTAMPS`,
    /// `mode=opentelemetry`, or `opentelemetry,url=URL` / `,protocol=grpc|http/protobuf` /
    /// `,resource=KEY=VALUE` / `,bsp_max_queue_size=N` / `,bsp_max_export_batch_size=N` /
    /// `,bsp_schedule_delay=MS`; repeat it. Traces are exported once a URL is given
    /// (here or by OTEL_EXPORTER_OTLP_ENDPOINT) or the mode is set
    #[arg(long = "trace-config", id = "trace_config")]
    pub trace_config: Vec<String>,
}

/// A struct's settings at their declared defaults, whatever the environment holds.
fn declared_defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(Command::new("wharf")).mut_args(|arg| arg.env(None));
    let matches = command.get_matches_from(["wharf"]);
    T::from_arg_matches(&matches).expect("every setting's default parses")
}

macro_rules! defaults_from_declarations {
    ($($ty:ty),*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                declared_defaults()
            }
        }
    )*};
}
defaults_from_declarations!(
    ServerConfig,
    ListenConfig,
    Limits,
    LoadConfig,
    ControlConfig,
    RuntimeConfig,
    TracingConfig
);

impl ListenConfig {
    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.grpc_port)
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.metrics_port)
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.http_port)
    }

    /// The certificate and key files, where TLS is on.
    pub fn tls(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }
}

impl Limits {
    /// Tensor bytes one request may carry.
    pub fn max_request_bytes(&self) -> usize {
        usize::try_from(self.max_request_size.as_u64()).unwrap_or(usize::MAX)
    }

    /// Request bytes held at once by every request in flight together.
    pub fn max_inflight_bytes(&self) -> usize {
        usize::try_from(self.max_inflight_bytes.as_u64()).unwrap_or(usize::MAX)
    }
}

impl LoadConfig {
    /// Memory per GPU by index, as configured; empty asks the driver.
    pub fn gpu_memory_bytes(&self) -> BTreeMap<u32, u64> {
        self.gpu_memory
            .iter()
            .map(|(device, size)| (*device, size.as_u64()))
            .collect()
    }
}

impl RuntimeConfig {
    /// The async runtime's worker threads: half the cores, at least one, unless set.
    /// Engines compute on instance threads of their own, so the runtime only moves bytes
    /// and schedules; with a worker per core (tokio's default) it oversubscribes the cores
    /// the instances need, and its idle workers burn CPU searching for work and waking
    /// each other (2 cores, `simple` at c64: 0.69x the echo's req/s with one worker
    /// against 0.66x with two; benches/README.md).
    pub fn runtime_threads(&self) -> usize {
        self.runtime_threads.unwrap_or_else(|| cores().div_ceil(2))
    }

    /// Loads run at once at start-up: twice the cores unless set. Loading is mostly
    /// single-threaded compiling and timing, so two loads a core keep every core busy
    /// while one waits on its files, and READY comes when the whole set is done (PP-OCR
    /// cls + det + rec on 2 cores: 0.92 s to READY three at once, 1.03 s two at once).
    pub fn load_parallelism(&self) -> usize {
        self.load_parallelism.unwrap_or_else(|| 2 * cores())
    }
}

fn cores() -> usize {
    crate::cpus::available()
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerConfig {
    /// Defaults for a repository, listening on loopback with OS-chosen ports (for tests and
    /// embedding).
    pub fn local(model_repository: impl Into<PathBuf>) -> ServerConfig {
        let mut config = ServerConfig::default();
        config.load.model_repository = model_repository.into();
        config.listen.host = IpAddr::V4(Ipv4Addr::LOCALHOST);
        config.listen.grpc_port = 0;
        config.listen.metrics_port = 0;
        config.listen.http_port = 0;
        config
    }

    /// The settings from the declared defaults, the YAML file at `file` and `given`: the
    /// flags and variables set, parsed by `given_only` so that unset ones are absent.
    pub fn resolve(file: Option<&Path>, given: &ArgMatches) -> Result<ServerConfig, String> {
        let mut config = match file {
            Some(path) => ServerConfig::read(path)?,
            None => ServerConfig::default(),
        };
        config
            .update_from_arg_matches(given)
            .map_err(|e| e.to_string())?;
        // The key as a variable (from a Secret through env), never as a flag: flags show
        // in `ps`.
        let from_env = std::env::var("WHARF_API_KEY").ok();
        config.listen.api_key = match (&config.listen.api_key_file, from_env) {
            (Some(_), Some(_)) => {
                return Err("WHARF_API_KEY and an API key file are both set; keep one".into())
            }
            (Some(path), None) => Some(ApiKey::from_file(path)?),
            (None, Some(key)) => Some(ApiKey::new(&key)?),
            (None, None) => None,
        };
        config.validate()?;
        Ok(config)
    }

    /// `command` with every default of `wharf serve`'s settings taken off, so that its
    /// matches hold only what the flags and variables set (what beats the file).
    pub fn given_only(command: Command) -> Command {
        command.mut_subcommand("serve", |serve| {
            serve.mut_args(|arg| arg.default_value(None))
        })
    }

    /// A YAML settings file over the defaults; an unknown key or a bad value is named.
    pub fn read(path: &Path) -> Result<ServerConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        ServerConfig::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn from_yaml(text: &str) -> Result<ServerConfig, String> {
        let keys = match serde_yaml::from_str(text).map_err(|e| e.to_string())? {
            serde_yaml::Value::Null => return Ok(ServerConfig::default()),
            serde_yaml::Value::Mapping(keys) => keys,
            _ => return Err("expected a mapping of setting names to values".into()),
        };
        let known = setting_keys();
        // Each key alone first, so that a bad value is named by its key (serde's flatten
        // loses the path).
        for (key, value) in &keys {
            let name = key.as_str().unwrap_or_default();
            if !known.iter().any(|k| k == name) {
                return Err(format!(
                    "key `{}`: unknown setting (known: {})",
                    serde_yaml::to_string(key).unwrap_or_default().trim(),
                    known.join(", ")
                ));
            }
            let mut one = serde_yaml::Mapping::new();
            one.insert(key.clone(), value.clone());
            serde_yaml::from_value::<ServerConfig>(one.into())
                .map_err(|e| format!("key `{name}`: {e}"))?;
        }
        serde_yaml::from_value(keys.into()).map_err(|e| e.to_string())
    }

    /// What the types cannot say: ranges, and settings that only go together.
    fn validate(&self) -> Result<(), String> {
        let max = self.limits.max_request_size;
        if max.as_u64() == 0 || max.as_u64() > u32::MAX as u64 {
            return Err(format!(
                "max_request_size: expected 1 byte to 4GiB, found {max}"
            ));
        }
        let inflight = self.limits.max_inflight_bytes;
        if inflight < max {
            return Err(format!(
                "max_inflight_bytes: expected at least max_request_size ({max}), found {inflight}"
            ));
        }
        for (key, value) in [
            ("model_load_timeout_secs", self.load.model_load_timeout),
            ("handshake_timeout_secs", self.listen.handshake_timeout),
            ("repository_poll_secs", self.control.repository_poll),
        ] {
            if value.is_zero() {
                return Err(format!("{key}: expected at least 1 second, found 0"));
            }
        }
        if self.load.latency_objective.is_zero() {
            return Err("latency_objective_ms: expected at least 1 millisecond, found 0".into());
        }
        for (key, value) in [
            ("runtime_threads", self.runtime.runtime_threads),
            ("load_parallelism", self.runtime.load_parallelism),
        ] {
            if value == Some(0) {
                return Err(format!("{key}: expected at least 1, found 0"));
            }
        }
        let mode = self.control.model_control_mode;
        if !self.control.load_model.is_empty() && mode != ControlMode::Explicit {
            return Err(format!(
                "load_model: only with model_control_mode explicit (it is {})",
                mode.as_str()
            ));
        }
        if self.listen.tls_cert.is_some() != self.listen.tls_key.is_some() {
            return Err("tls_cert and tls_key: give both or neither".into());
        }
        Ok(())
    }
}

/// Every setting's YAML key: its flag's id.
pub fn setting_keys() -> Vec<String> {
    ServerConfig::augment_args(Command::new("wharf"))
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .collect()
}

/// The settings reference (docs/configuration.md), from the declarations themselves.
pub fn reference_markdown() -> String {
    let command = ServerConfig::augment_args(Command::new("wharf"));
    let mut out = String::from(
        "# Configuration\n\n\
         Generated from `src/config.rs` (a test fails when this file and the code differ; \
         `WHARF_WRITE_DOCS=1 cargo test --release --lib config` rewrites it). Every setting \
         of `wharf serve` is a flag, most also a variable, and each is a key of the YAML file \
         given with `--config` (`WHARF_CONFIG`). Variables and flags beat the file, which \
         beats the defaults. The API key itself is read from `api_key_file` or from the \
         variable `WHARF_API_KEY`, never from a flag or the file.\n\n\
         | flag | variable | YAML key | default | what |\n|---|---|---|---|---|\n",
    );
    for arg in command.get_arguments() {
        let flag = arg.get_long().map_or(String::new(), |l| format!("`--{l}`"));
        let env = arg
            .get_env()
            .map_or(String::new(), |e| format!("`{}`", e.to_string_lossy()));
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = if defaults.is_empty() {
            String::new()
        } else {
            format!("`{}`", defaults.join(","))
        };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string().replace('\n', " ").replace('|', "\\|"))
            .unwrap_or_default();
        out.push_str(&format!(
            "| {flag} | {env} | `{}` | {default} | {help} |\n",
            arg.get_id()
        ));
    }
    out
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse()
        .map(Duration::from_secs)
        .map_err(|e| format!("expected whole seconds: {e}"))
}

fn parse_millis(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse()
        .map(Duration::from_millis)
        .map_err(|e| format!("expected whole milliseconds: {e}"))
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

fn de_secs<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    u64::deserialize(de).map(Duration::from_secs)
}

fn de_millis<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    u64::deserialize(de).map(Duration::from_millis)
}

fn de_gpu_memory<'de, D: serde::Deserializer<'de>>(
    de: D,
) -> Result<Vec<(u32, ByteSize)>, D::Error> {
    BTreeMap::<u32, ByteSize>::deserialize(de).map(|map| map.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        Serve(ServerConfig),
    }

    /// The settings from a YAML text and flags, as `wharf serve` resolves them.
    fn resolve(yaml: &str, flags: &[&str]) -> Result<ServerConfig, String> {
        use clap::CommandFactory;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wharf.yaml");
        std::fs::write(&path, yaml).unwrap();
        let argv = ["wharf", "serve"].iter().chain(flags);
        let matches = ServerConfig::given_only(Cli::command()).get_matches_from(argv);
        ServerConfig::resolve(Some(&path), matches.subcommand_matches("serve").unwrap())
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let c = resolve(
            "grpc_port: 9001\nmetrics_port: 9002\nmax_request_size: 1MiB",
            &["--grpc-port", "0"],
        )
        .unwrap();
        assert_eq!(c.listen.grpc_addr().port(), 0);
        assert_eq!(c.listen.metrics_addr().port(), 9002);
        assert_eq!(c.limits.max_request_bytes(), 1 << 20);
        assert_eq!(c.load.model_repository, PathBuf::from("models"));
        assert_eq!(c.limits.exit_timeout, Duration::from_secs(30));
        assert_eq!(c.limits.max_inflight_bytes(), 1 << 30);
        assert_eq!(c.load.model_load_timeout, Duration::from_secs(120));
        assert!(c.control.strict_readiness);
        let c = resolve("strict_readiness: true", &["--strict-readiness", "false"]).unwrap();
        assert!(!c.control.strict_readiness);
    }

    #[test]
    fn inflight_budget_and_timeouts_are_checked() {
        assert_eq!(
            resolve("max_request_size: 64MiB\nmax_inflight_bytes: 1MiB", &[]).unwrap_err(),
            "max_inflight_bytes: expected at least max_request_size (64.0 MiB), found 1.0 MiB"
        );
        assert_eq!(
            resolve("model_load_timeout_secs: 0", &[]).unwrap_err(),
            "model_load_timeout_secs: expected at least 1 second, found 0"
        );
        assert_eq!(
            resolve("", &["--runtime-threads", "0"]).unwrap_err(),
            "runtime_threads: expected at least 1, found 0"
        );
        assert_eq!(
            resolve("load_model: [a]", &[]).unwrap_err(),
            "load_model: only with model_control_mode explicit (it is none)"
        );
        let c = resolve("handshake_timeout_secs: 3\nmax_inflight_bytes: 2GiB", &[]).unwrap();
        assert_eq!(c.listen.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.limits.max_inflight_bytes(), 2 << 30);
        assert!(c.runtime.runtime_threads() >= 1);
        assert_eq!(
            resolve("runtime_threads: 3", &[])
                .unwrap()
                .runtime
                .runtime_threads(),
            3
        );
    }

    #[test]
    fn security_and_gpu_keys_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("api-key");
        std::fs::write(&key, "s3cret\n").unwrap();
        let yaml = format!(
            "api_key_file: {}\ngpu_memory: {{0: 4GiB, 1: 512MiB}}\ntls_cert: c.pem\n",
            key.display()
        );
        assert_eq!(
            resolve(&yaml, &[]).unwrap_err(),
            "tls_cert and tls_key: give both or neither"
        );
        let c = resolve(&yaml, &["--tls-key", "k.pem"]).unwrap();
        assert_eq!(c.listen.api_key, Some(ApiKey::new("s3cret").unwrap()));
        assert_eq!(
            c.load.gpu_memory_bytes(),
            BTreeMap::from([(0, 4 << 30), (1, 512 << 20)])
        );
        assert_eq!(c.listen.tls().unwrap().key, PathBuf::from("k.pem"));
        let flags = resolve("", &["--gpu-memory", "0=2GiB", "--gpu-memory", "1=1GiB"]).unwrap();
        assert_eq!(
            flags.load.gpu_memory_bytes(),
            BTreeMap::from([(0, 2 << 30), (1, 1 << 30)])
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = resolve("grpc_prot: 1", &[]).unwrap_err();
        assert!(
            err.contains("wharf.yaml") && err.contains("key `grpc_prot`"),
            "{err}"
        );
        let err = resolve("metrics_port: lots", &[]).unwrap_err();
        assert!(err.contains("key `metrics_port`"), "{err}");
    }

    #[test]
    fn every_flag_is_a_yaml_key_with_its_default() {
        // Each setting's declared default, written as YAML under its id, reads back as
        // that default: ids and YAML keys cannot drift apart.
        let command = ServerConfig::augment_args(Command::new("wharf"));
        for arg in command.get_arguments() {
            let Some(default) = arg.get_default_values().first() else {
                continue;
            };
            let yaml = format!("{}: {}", arg.get_id(), default.to_string_lossy());
            assert_eq!(
                ServerConfig::from_yaml(&yaml),
                Ok(ServerConfig::default()),
                "{yaml}"
            );
        }
    }

    #[test]
    fn the_configuration_reference_is_what_the_code_declares() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
        let generated = reference_markdown();
        if std::env::var_os("WHARF_WRITE_DOCS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            written == generated,
            "docs/configuration.md differs from src/config.rs: run \
             `WHARF_WRITE_DOCS=1 cargo test --release --lib config` and commit it"
        );
    }
}
