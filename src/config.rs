//! The server's own settings: typed, from defaults, an optional YAML file and explicit
//! overrides (the CLI and WHARF_* variables, which clap reads), in that order of strength.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use bytesize::ByteSize;
use serde::Deserialize;

use crate::auth::ApiKey;

/// Tensor data one request may carry unless configured otherwise.
/// A CUDA process's memory before any session: measured on an H200, 2 sessions with arenas
/// of 10 MiB held 846 MiB, of which about 140 MiB a session (their cuDNN and cuBLAS handles,
/// counted per session by the budget check).
pub const DEFAULT_GPU_CONTEXT_MEMORY: ByteSize = ByteSize::mib(640);
pub const DEFAULT_MAX_REQUEST_SIZE: ByteSize = ByteSize::mib(64);

/// Request bytes held at once, unless configured: past it a request is refused at once.
pub const DEFAULT_MAX_INFLIGHT_BYTES: ByteSize = ByteSize::gib(1);

/// How long one model version may take to load and warm before it is UNAVAILABLE.
pub const DEFAULT_MODEL_LOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a new connection may take to send its first bytes (the HTTP/2 preface or a TLS
/// hello) before it is closed.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often poll mode rescans the repository, unless configured (Triton's default).
pub const DEFAULT_REPOSITORY_POLL: Duration = Duration::from_secs(15);

/// The answer time the saturation signal is measured against, unless configured.
pub const DEFAULT_LATENCY_OBJECTIVE: Duration = Duration::from_millis(100);

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

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub model_repository: PathBuf,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// How long a drain may take before the process exits with work still in flight.
    pub exit_timeout: Duration,
    /// Tensor bytes per request; larger requests are INVALID_ARGUMENT.
    pub max_request_bytes: usize,
    /// Request bytes held at once by every request in flight together; a request that
    /// would pass it is RESOURCE_EXHAUSTED before its bytes are read.
    pub max_inflight_bytes: usize,
    /// A version still loading after this is UNAVAILABLE, and the others load on.
    pub model_load_timeout: Duration,
    /// A connection that has not sent its first bytes by then is closed.
    pub handshake_timeout: Duration,
    /// Ready only when every model is READY (Triton's default); otherwise once loading
    /// has settled, whatever failed.
    pub strict_readiness: bool,
    /// Models loaded at once at start-up.
    pub load_parallelism: usize,
    /// The ONNX Runtime library for `backend: onnxruntime` models.
    pub onnxruntime_lib: Option<PathBuf>,
    /// What the saturation signal measures pending work against.
    pub latency_objective: Duration,
    /// Wanted on every inference RPC when set (health and reflection stay open).
    pub api_key: Option<ApiKey>,
    /// Serve gRPC over TLS with this certificate chain and key (PEM).
    pub tls: Option<TlsFiles>,
    /// Memory per GPU for the per-device budget check; empty asks the NVIDIA driver.
    pub gpu_memory: BTreeMap<u32, u64>,
    /// What the process holds on a GPU before any arena (CUDA context, cuDNN and cuBLAS
    /// handles and kernels), counted once per device in the budget check.
    pub gpu_context_memory: u64,
    /// What changes the loaded models while serving (Triton's --model-control-mode).
    pub model_control: ControlMode,
    /// Explicit mode: the models loaded at start (`*`: all).
    pub load_models: Vec<String>,
    /// Poll mode: how often the repository is rescanned.
    pub repository_poll: Duration,
    /// Worker threads of the async runtime (gRPC, metrics, batching schedulers).
    pub runtime_threads: usize,
}

/// Loads run at once at start-up: twice the cores. Loading is mostly single-threaded
/// compiling and timing, so two loads a core keep every core busy while one waits on its
/// files, and READY comes when the whole set is done, not the first (PP-OCR cls + det +
/// rec on 2 cores: 0.92 s to READY three at once, 1.03 s two at once).
fn default_load_parallelism() -> usize {
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The async runtime's worker threads: half the cores, at least one. Engines compute on
/// instance threads of their own, so the runtime only moves bytes and schedules; with a
/// worker per core (tokio's default) it oversubscribes the cores the instances need, and
/// its idle workers burn CPU searching for work and waking each other (2 cores, `simple`
/// at c64: 0.69x the echo's req/s with one worker against 0.66x with two; benches/README.md).
pub fn default_runtime_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .div_ceil(2)
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
        let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        ServerConfig {
            model_repository: model_repository.into(),
            grpc_addr: any,
            metrics_addr: any,
            exit_timeout: Duration::from_secs(30),
            max_request_bytes: DEFAULT_MAX_REQUEST_SIZE.as_u64() as usize,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES.as_u64() as usize,
            model_load_timeout: DEFAULT_MODEL_LOAD_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            strict_readiness: true,
            load_parallelism: default_load_parallelism(),
            onnxruntime_lib: None,
            latency_objective: DEFAULT_LATENCY_OBJECTIVE,
            api_key: None,
            tls: None,
            gpu_memory: BTreeMap::new(),
            gpu_context_memory: DEFAULT_GPU_CONTEXT_MEMORY.as_u64(),
            model_control: ControlMode::None,
            load_models: Vec::new(),
            repository_poll: DEFAULT_REPOSITORY_POLL,
            runtime_threads: default_runtime_threads(),
        }
    }
}

/// The YAML file given with `--config`; every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub model_repository: Option<PathBuf>,
    pub host: Option<IpAddr>,
    pub grpc_port: Option<u16>,
    pub metrics_port: Option<u16>,
    pub exit_timeout_secs: Option<u64>,
    pub max_request_size: Option<ByteSize>,
    pub max_inflight_bytes: Option<ByteSize>,
    pub model_load_timeout_secs: Option<u64>,
    pub handshake_timeout_secs: Option<u64>,
    pub strict_readiness: Option<bool>,
    pub onnxruntime_lib: Option<PathBuf>,
    pub latency_objective_ms: Option<u64>,
    /// A file holding the API key (a mounted Secret); the key itself never goes in here.
    pub api_key_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Memory of each GPU by index ({0: 4GiB}), where the driver cannot be asked.
    pub gpu_memory: Option<BTreeMap<u32, ByteSize>>,
    /// GPU memory held before any arena (CUDA context and libraries), per device.
    pub gpu_context_memory: Option<ByteSize>,
    pub model_control_mode: Option<ControlMode>,
    pub load_model: Option<Vec<String>>,
    pub repository_poll_secs: Option<u64>,
    pub runtime_threads: Option<usize>,
}

impl ServerFile {
    pub fn read(path: &Path) -> Result<ServerFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let de = serde_yaml::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(de)
            .map_err(|e| format!("{}: key `{}`: {}", path.display(), e.path(), e.inner()))
    }

    /// Applies `overrides` over this file over the defaults.
    pub fn resolve(self, overrides: ServerFile) -> Result<ServerConfig, String> {
        let host = overrides
            .host
            .or(self.host)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let grpc_port = overrides.grpc_port.or(self.grpc_port).unwrap_or(8001);
        let metrics_port = overrides.metrics_port.or(self.metrics_port).unwrap_or(8002);
        let max = overrides
            .max_request_size
            .or(self.max_request_size)
            .unwrap_or(DEFAULT_MAX_REQUEST_SIZE);
        if max.as_u64() == 0 || max.as_u64() > u32::MAX as u64 {
            return Err(format!(
                "max_request_size: expected 1 byte to 4GiB, found {max}"
            ));
        }
        let inflight = overrides
            .max_inflight_bytes
            .or(self.max_inflight_bytes)
            .unwrap_or(DEFAULT_MAX_INFLIGHT_BYTES);
        if inflight < max {
            return Err(format!(
                "max_inflight_bytes: expected at least max_request_size ({max}), found {inflight}"
            ));
        }
        let positive = |key: &str, value: Option<u64>, default: Duration| match value {
            Some(0) => Err(format!("{key}: expected at least 1 second, found 0")),
            Some(secs) => Ok(Duration::from_secs(secs)),
            None => Ok(default),
        };
        let model_load_timeout = positive(
            "model_load_timeout_secs",
            overrides
                .model_load_timeout_secs
                .or(self.model_load_timeout_secs),
            DEFAULT_MODEL_LOAD_TIMEOUT,
        )?;
        let handshake_timeout = positive(
            "handshake_timeout_secs",
            overrides
                .handshake_timeout_secs
                .or(self.handshake_timeout_secs),
            DEFAULT_HANDSHAKE_TIMEOUT,
        )?;
        let objective_ms = overrides
            .latency_objective_ms
            .or(self.latency_objective_ms)
            .unwrap_or(DEFAULT_LATENCY_OBJECTIVE.as_millis() as u64);
        if objective_ms == 0 {
            return Err("latency_objective_ms: expected at least 1 millisecond, found 0".into());
        }
        let repository_poll = positive(
            "repository_poll_secs",
            overrides.repository_poll_secs.or(self.repository_poll_secs),
            DEFAULT_REPOSITORY_POLL,
        )?;
        let runtime_threads = match overrides.runtime_threads.or(self.runtime_threads) {
            Some(0) => return Err("runtime_threads: expected at least 1, found 0".into()),
            Some(n) => n,
            None => default_runtime_threads(),
        };
        let model_control = overrides
            .model_control_mode
            .or(self.model_control_mode)
            .unwrap_or_default();
        let load_models = overrides.load_model.or(self.load_model).unwrap_or_default();
        if !load_models.is_empty() && model_control != ControlMode::Explicit {
            return Err(format!(
                "load_model: only with model_control_mode explicit (it is {})",
                model_control.as_str()
            ));
        }
        let api_key = overrides
            .api_key_file
            .or(self.api_key_file)
            .map(|path| ApiKey::from_file(&path))
            .transpose()?;
        let tls = match (
            overrides.tls_cert.or(self.tls_cert),
            overrides.tls_key.or(self.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => return Err("tls_cert and tls_key: give both or neither".into()),
        };
        Ok(ServerConfig {
            model_control,
            load_models,
            repository_poll,
            runtime_threads,
            api_key,
            tls,
            gpu_memory: overrides
                .gpu_memory
                .or(self.gpu_memory)
                .unwrap_or_default()
                .into_iter()
                .map(|(device, size)| (device, size.as_u64()))
                .collect(),
            gpu_context_memory: overrides
                .gpu_context_memory
                .or(self.gpu_context_memory)
                .unwrap_or(DEFAULT_GPU_CONTEXT_MEMORY)
                .as_u64(),
            latency_objective: Duration::from_millis(objective_ms),
            model_repository: overrides
                .model_repository
                .or(self.model_repository)
                .unwrap_or_else(|| "models".into()),
            grpc_addr: SocketAddr::new(host, grpc_port),
            metrics_addr: SocketAddr::new(host, metrics_port),
            exit_timeout: Duration::from_secs(
                overrides
                    .exit_timeout_secs
                    .or(self.exit_timeout_secs)
                    .unwrap_or(30),
            ),
            max_request_bytes: max.as_u64() as usize,
            max_inflight_bytes: usize::try_from(inflight.as_u64()).unwrap_or(usize::MAX),
            model_load_timeout,
            handshake_timeout,
            strict_readiness: overrides
                .strict_readiness
                .or(self.strict_readiness)
                .unwrap_or(true),
            load_parallelism: default_load_parallelism(),
            onnxruntime_lib: overrides.onnxruntime_lib.or(self.onnxruntime_lib),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_beat_the_file_which_beats_defaults() {
        let file: ServerFile =
            serde_yaml::from_str("grpc_port: 9001\nmetrics_port: 9002\nmax_request_size: 1MiB")
                .unwrap();
        let overrides = ServerFile {
            grpc_port: Some(0),
            ..Default::default()
        };
        let c = file.resolve(overrides).unwrap();
        assert_eq!(c.grpc_addr.port(), 0);
        assert_eq!(c.metrics_addr.port(), 9002);
        assert_eq!(c.max_request_bytes, 1 << 20);
        assert_eq!(c.model_repository, PathBuf::from("models"));
        assert_eq!(c.exit_timeout, Duration::from_secs(30));
        assert_eq!(c.max_inflight_bytes, 1 << 30);
        assert_eq!(c.model_load_timeout, DEFAULT_MODEL_LOAD_TIMEOUT);
    }

    #[test]
    fn inflight_budget_and_timeouts_are_checked() {
        let resolve = |yaml: &str| {
            serde_yaml::from_str::<ServerFile>(yaml)
                .unwrap()
                .resolve(ServerFile::default())
        };
        assert_eq!(
            resolve("max_request_size: 64MiB\nmax_inflight_bytes: 1MiB").unwrap_err(),
            "max_inflight_bytes: expected at least max_request_size (64.0 MiB), found 1.0 MiB"
        );
        assert_eq!(
            resolve("model_load_timeout_secs: 0").unwrap_err(),
            "model_load_timeout_secs: expected at least 1 second, found 0"
        );
        assert_eq!(
            resolve("runtime_threads: 0").unwrap_err(),
            "runtime_threads: expected at least 1, found 0"
        );
        let c = resolve("handshake_timeout_secs: 3\nmax_inflight_bytes: 2GiB").unwrap();
        assert_eq!(c.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.max_inflight_bytes, 2 << 30);
        assert_eq!(c.runtime_threads, default_runtime_threads());
        assert!(c.runtime_threads >= 1);
        assert_eq!(resolve("runtime_threads: 3").unwrap().runtime_threads, 3);
    }

    #[test]
    fn security_and_gpu_keys_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("api-key");
        std::fs::write(&key, "s3cret\n").unwrap();
        let file: ServerFile = serde_yaml::from_str(&format!(
            "api_key_file: {}\ngpu_memory: {{0: 4GiB, 1: 512MiB}}\ntls_cert: c.pem\n",
            key.display()
        ))
        .unwrap();
        let half_tls = file.clone().resolve(ServerFile::default()).unwrap_err();
        assert_eq!(half_tls, "tls_cert and tls_key: give both or neither");
        let c = file
            .resolve(ServerFile {
                tls_key: Some("k.pem".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(c.api_key, Some(ApiKey::new("s3cret").unwrap()));
        assert_eq!(c.gpu_memory, BTreeMap::from([(0, 4 << 30), (1, 512 << 20)]));
        assert_eq!(c.tls.unwrap().key, PathBuf::from("k.pem"));
    }

    #[test]
    fn unknown_file_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wharf.yaml");
        std::fs::write(&path, "grpc_prot: 1").unwrap();
        let err = ServerFile::read(&path).unwrap_err();
        assert!(
            err.contains("wharf.yaml") && err.contains("grpc_prot"),
            "{err}"
        );
    }
}
