//! Starts the real server on a loopback port and connects real gRPC clients to it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use tonic::transport::Channel;
use wharf::{
    app::Server,
    config::ServerConfig,
    grpc::pb::{
        self, grpc_inference_service_client::GrpcInferenceServiceClient,
        model_infer_request::InferInputTensor, InferTensorContents, ModelInferRequest,
    },
};

pub type Client = GrpcInferenceServiceClient<Channel>;

pub fn test_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/models")
}

pub struct TestServer {
    pub server: Server,
    pub client: Client,
    pub channel: Channel,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> TestServer {
        let server = Server::start(config).await.expect("server starts");
        server.loaded().await;
        let channel = connect(&server).await;
        let client = GrpcInferenceServiceClient::new(channel.clone())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        TestServer {
            client,
            channel,
            server,
        }
    }

    /// Every model and version with its state, as RepositoryIndex reports them.
    pub async fn index(&mut self) -> Vec<pb::repository_index_response::ModelIndex> {
        let request = pb::RepositoryIndexRequest::default();
        self.client
            .repository_index(request)
            .await
            .unwrap()
            .into_inner()
            .models
    }

    /// The served ModelConfig of the highest ready version of `name`.
    pub async fn model_config(&mut self, name: &str) -> pb::ModelConfig {
        let request = pb::ModelConfigRequest {
            name: name.into(),
            version: String::new(),
        };
        self.client
            .model_config(request)
            .await
            .unwrap()
            .into_inner()
            .config
            .unwrap()
    }

    /// The (rows, peak bytes) pairs warmup measured, from the served ModelConfig's
    /// `batch_peak_bytes` parameter, with the rows its budget allows.
    pub async fn batch_peaks(&mut self, name: &str) -> (Vec<(usize, u64)>, String) {
        let config = self.model_config(name).await;
        let param = |k: &str| {
            config
                .parameters
                .get(k)
                .map(|p| p.string_value.clone())
                .unwrap_or_default()
        };
        let peaks = param("batch_peak_bytes")
            .split(',')
            .map(|p| {
                let (r, b) = p.split_once(':').unwrap();
                (r.parse().unwrap(), b.parse().unwrap())
            })
            .collect();
        (peaks, param("batch_rows_allowed"))
    }

    /// The test repository with default settings.
    pub async fn default() -> TestServer {
        TestServer::start(ServerConfig::local(test_models())).await
    }
}

pub async fn connect(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.grpc_addr()))
        .expect("valid uri")
        .connect()
        .await
        .expect("connects")
}

pub fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        ..Default::default()
    }
}

pub fn fp32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A raw FP32 request for a one-input model.
pub fn raw_request(model: &str, name: &str, shape: &[i64], values: &[f32]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![input(name, "FP32", shape)],
        raw_input_contents: vec![fp32_bytes(values).into()],
        ..Default::default()
    }
}

pub fn typed(
    name: &str,
    datatype: &str,
    shape: &[i64],
    contents: InferTensorContents,
) -> InferInputTensor {
    InferInputTensor {
        contents: Some(contents),
        ..input(name, datatype, shape)
    }
}

pub fn f32s(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn add_sub_request() -> ModelInferRequest {
    let a = [1.0, 2.0, 3.0, 4.0];
    let b = [0.5, 0.5, 0.5, 0.5];
    ModelInferRequest {
        model_name: "add_sub".into(),
        id: "req-1".into(),
        inputs: vec![
            input("INPUT0", "FP32", &[1, 4]),
            input("INPUT1", "FP32", &[1, 4]),
        ],
        raw_input_contents: vec![fp32_bytes(&a).into(), fp32_bytes(&b).into()],
        ..Default::default()
    }
}

pub fn requested(name: &str) -> pb::model_infer_request::InferRequestedOutputTensor {
    pb::model_infer_request::InferRequestedOutputTensor {
        name: name.into(),
        parameters: Default::default(),
    }
}

/// A repository of `(folder, model file, config.yaml)`, each as version 1.
pub fn repository(models: &[(&str, PathBuf, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, onnx, config) in models {
        let version = dir.path().join(name).join("1");
        std::fs::create_dir_all(&version).unwrap();
        std::fs::copy(onnx, version.join("model.onnx")).unwrap();
        std::fs::write(dir.path().join(name).join("config.yaml"), config).unwrap();
    }
    dir
}

/// A config for tests/models' `slow` whose warm-up runs its ~350 ms call `count` times, so
/// that its load takes a while.
pub fn slow_warmup_config(count: u32) -> String {
    format!(
        "max_batch_size: 0\nmodel_warmup:\n  - {{ name: long, batch_size: 1, count: {count}, inputs: {{ x: {{ data_type: TYPE_FP32, dims: [1024, 1024], zero_data: true }} }} }}\n"
    )
}

/// A repository holding one model `name`, version 1, copied from `onnx`, with `config` as
/// its config.yaml.
pub fn one_model_repository(name: &str, onnx: &Path, config: &str) -> tempfile::TempDir {
    repository(&[(name, onnx.to_owned(), config)])
}

/// GET `path` on the metrics port: the status code, the head and the body.
pub async fn get(server: &Server, path: &str) -> (u16, String, String) {
    get_at(server.metrics_addr(), path).await
}

/// GET `path` from a metrics port by address (a server in another process).
pub async fn get_at(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: wharf\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, head.to_owned(), body.to_owned())
}

/// GET /metrics, the body as text.
pub async fn scrape(server: &Server) -> String {
    let (code, head, body) = get(server, "/metrics").await;
    assert_eq!(code, 200, "{head}");
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: text/plain; version=0.0.4"));
    body
}

/// Polls the metrics at `addr` until `series` reaches `at_least`, failing after 20 s: how a
/// test waits for a request to be running (`wharf_instances_busy`) or queued, rather than
/// sleeping and hoping.
pub async fn wait_for_metric(addr: std::net::SocketAddr, series: &str, at_least: f64) {
    wait_for_series(addr, series, "at least", |v| v >= at_least, at_least).await;
}

async fn wait_for_series(
    addr: std::net::SocketAddr,
    series: &str,
    how: &str,
    holds: impl Fn(f64) -> bool,
    bound: f64,
) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, _, body) = get_at(addr, "/metrics").await;
        let now = samples(&body).get(series).copied().unwrap_or(0.0);
        if holds(now) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {series} {how} {bound} (at {now})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

pub const SLOW_BUSY: &str = r#"wharf_instances_busy{model="slow",version="1"}"#;

/// The slow test model's instance has reported its last call done: a request sent now is
/// the one `wait_until_slow_is_busy` will see running (the busy gauge falls just after an
/// answer, not with it).
pub async fn wait_until_slow_is_idle_at(addr: std::net::SocketAddr) {
    wait_for_series(addr, SLOW_BUSY, "at most", |v| v <= 0.0, 0.0).await;
}

pub async fn wait_until_slow_is_idle(server: &Server) {
    wait_until_slow_is_idle_at(server.metrics_addr()).await;
}

/// The slow test model's instance is running a request.
pub async fn wait_until_slow_is_busy(server: &Server) {
    wait_for_metric(server.metrics_addr(), SLOW_BUSY, 1.0).await;
}

/// Every sample as `name{labels}` → value.
pub fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Polls `check` until it holds, failing after `limit`.
pub async fn until(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn metric(server: &wharf::app::Server, series: &str) -> f64 {
    samples(&scrape(server).await)
        .get(series)
        .copied()
        .unwrap_or(0.0)
}
