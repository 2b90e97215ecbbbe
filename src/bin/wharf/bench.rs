//! `wharf bench`: a load generator for any KServe v2 gRPC server, in the spirit of
//! Triton's perf_analyzer. Closed loop (N clients back to back) or open loop (a fixed
//! request rate, latency counted from when each request was due), with warmup.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Mutex;
use tonic::transport::Channel;

use wharf::{
    grpc::pb::{
        self, grpc_inference_service_client::GrpcInferenceServiceClient,
        model_infer_request::InferInputTensor, ModelInferRequest,
    },
    tensor::DataType,
};

type Client = GrpcInferenceServiceClient<Channel>;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8001")]
    pub url: String,
    #[arg(long)]
    pub model: String,
    #[arg(long, default_value = "")]
    pub model_version: String,
    /// An input's full shape, batch included: NAME:1,3,48,320 (repeatable). Inputs whose
    /// shape the model fixes need none.
    #[arg(long = "shape", value_parser = parse_shape)]
    pub shapes: Vec<(String, Vec<i64>)>,
    /// An input's data as raw little-endian bytes: NAME:PATH (repeatable); random otherwise.
    /// For a BYTES input of one element the file is that element (an image, say).
    #[arg(long = "data-file", value_parser = parse_file)]
    pub data_files: Vec<(String, PathBuf)>,
    /// Closed loop: clients sending back to back.
    #[arg(long, default_value_t = 1, conflicts_with = "rate")]
    pub concurrency: usize,
    /// Open loop: requests per second, whatever the answers do.
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long to measure.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Stop after this many measured requests instead.
    #[arg(long)]
    pub count: Option<u64>,
    /// Load sent, but not measured, before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_secs: f64,
    /// HTTP/2 connections to spread the requests over, as a fleet of clients would. One
    /// connection is read and written by one task on each side, which caps large answers
    /// (rec's 1 MiB rows) at what one core can copy.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_shape(s: &str) -> Result<(String, Vec<i64>), String> {
    let (name, dims) = s.rsplit_once(':').ok_or("expected NAME:d1,d2,...")?;
    let dims = dims
        .split(',')
        .map(|d| d.trim().parse::<i64>().map_err(|e| format!("{d}: {e}")))
        .collect::<Result<_, _>>()?;
    Ok((name.to_owned(), dims))
}

fn parse_file(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once(':').ok_or("expected NAME:PATH")?;
    Ok((name.to_owned(), path.into()))
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub model: String,
    pub mode: String,
    pub requests: u64,
    pub rows_per_request: u64,
    pub seconds: f64,
    pub throughput_rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Failed requests by gRPC code.
    pub errors: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    let mut clients = Vec::with_capacity(args.connections.max(1));
    for _ in 0..args.connections.max(1) {
        // Windows as wide as the server's: a connection carries many concurrent requests.
        let channel = Channel::from_shared(format!("http://{}", args.url))?
            .initial_stream_window_size(Some(wharf::app::HTTP2_STREAM_WINDOW))
            .initial_connection_window_size(Some(wharf::app::HTTP2_CONNECTION_WINDOW))
            .connect()
            .await
            .with_context(|| format!("connecting to {}", args.url))?;
        clients.push(
            GrpcInferenceServiceClient::new(channel)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        );
    }
    let request = build_request(&mut clients[0], &args).await?;
    let rows = request
        .inputs
        .first()
        .and_then(|i| i.shape.first())
        .copied()
        .unwrap_or(1)
        .max(1) as u64;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let warmup = Duration::from_secs_f64(args.warmup_secs);
    let measure = Duration::from_secs_f64(args.duration_secs);
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + measure;
    let budget = Arc::new(std::sync::atomic::AtomicU64::new(
        args.count.unwrap_or(u64::MAX),
    ));

    let mode = match args.rate {
        None => {
            let tasks: Vec<_> = (0..args.concurrency.max(1))
                .map(|i| {
                    let (mut client, request, tally, budget) = (
                        clients[i % clients.len()].clone(),
                        request.clone(),
                        Arc::clone(&tally),
                        Arc::clone(&budget),
                    );
                    tokio::spawn(async move {
                        while Instant::now() < stop_at {
                            let sent = Instant::now();
                            // Counted before sending, so --count bounds what is sent.
                            let measured = sent >= measure_from;
                            if measured && !take(&budget) {
                                break;
                            }
                            let result = client.model_infer(request.clone()).await;
                            if measured {
                                record(&tally, sent.elapsed(), result.err()).await;
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await?;
            }
            format!(
                "closed loop, concurrency {} over {} connection(s)",
                args.concurrency,
                clients.len()
            )
        }
        Some(rate) => {
            if rate <= 0.0 {
                bail!("--rate must be above 0");
            }
            let period = Duration::from_secs_f64(1.0 / rate);
            let mut due = start;
            let mut pending = Vec::new();
            while due < stop_at {
                tokio::time::sleep_until(due.into()).await;
                if due >= measure_from && !take(&budget) {
                    break;
                }
                let (mut client, request, tally) = (
                    clients[pending.len() % clients.len()].clone(),
                    request.clone(),
                    Arc::clone(&tally),
                );
                let scheduled = due;
                pending.push(tokio::spawn(async move {
                    let result = client.model_infer(request).await;
                    if scheduled >= measure_from {
                        // From when it was due, so a slow server cannot hide its queue.
                        record(&tally, scheduled.elapsed(), result.err()).await;
                    }
                }));
                due += period;
            }
            for p in pending {
                p.await?;
            }
            format!("open loop, {rate} requests/s")
        }
    };
    let seconds = (Instant::now().min(stop_at) - measure_from)
        .as_secs_f64()
        .max(1e-9);
    let mut tally = std::mem::take(&mut *tally.lock().await);
    tally.latencies.sort_unstable();
    let pct = |p: f64| {
        tally
            .latencies
            .get(((tally.latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let ok = tally.latencies.len() as u64;
    let failed: u64 = tally.errors.values().sum();
    Ok(Report {
        model: args.model,
        mode,
        requests: ok + failed,
        rows_per_request: rows,
        seconds,
        throughput_rps: ok as f64 / seconds,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        errors: tally.errors,
    })
}

fn take(budget: &std::sync::atomic::AtomicU64) -> bool {
    use std::sync::atomic::Ordering;
    budget
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

async fn record(tally: &Mutex<Tally>, took: Duration, error: Option<tonic::Status>) {
    let mut t = tally.lock().await;
    match error {
        None => t.latencies.push(took),
        Some(status) => *t.errors.entry(format!("{:?}", status.code())).or_default() += 1,
    }
}

impl Report {
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string(self).expect("plain data"));
            return;
        }
        println!(
            "model {} ({}), {} rows per request",
            self.model, self.mode, self.rows_per_request
        );
        println!(
            "  {} requests in {:.1} s: {:.1} requests/s",
            self.requests, self.seconds, self.throughput_rps
        );
        println!(
            "  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        );
        if self.errors.is_empty() {
            println!("  errors: none");
        }
        for (code, n) in &self.errors {
            println!("  errors {code}: {n}");
        }
    }
}

/// One request for the model, shaped by its metadata and the flags.
async fn build_request(client: &mut Client, args: &BenchArgs) -> anyhow::Result<ModelInferRequest> {
    let meta = client
        .model_metadata(pb::ModelMetadataRequest {
            name: args.model.clone(),
            version: args.model_version.clone(),
        })
        .await
        .with_context(|| format!("model metadata for '{}'", args.model))?
        .into_inner();
    let mut inputs = Vec::new();
    let mut raw = Vec::new();
    for (i, input) in meta.inputs.iter().enumerate() {
        let datatype = DataType::parse(&input.datatype)
            .with_context(|| format!("input '{}': datatype {}", input.name, input.datatype))?;
        let shape = match args.shapes.iter().find(|(n, _)| *n == input.name) {
            Some((_, dims)) => dims.clone(),
            // A leading -1 is the batch dimension: one row.
            None if input.shape.iter().skip(1).all(|d| *d > 0) => input
                .shape
                .iter()
                .map(|d| if *d < 0 { 1 } else { *d })
                .collect(),
            None => bail!(
                "input '{}' has open dims {:?}: give --shape {}:...",
                input.name,
                input.shape,
                input.name
            ),
        };
        let count: usize = shape.iter().map(|d| *d as usize).product();
        let data = match args.data_files.iter().find(|(n, _)| *n == input.name) {
            Some((_, path)) => {
                let content = std::fs::read(path).with_context(|| path.display().to_string())?;
                if datatype == DataType::Bytes && count == 1 {
                    // One element: the protocol's raw form prefixes it with its length.
                    let length = u32::try_from(content.len())
                        .with_context(|| format!("{}: over 4 GiB", path.display()))?;
                    let mut framed = length.to_le_bytes().to_vec();
                    framed.extend_from_slice(&content);
                    Bytes::from(framed)
                } else {
                    Bytes::from(content)
                }
            }
            None => random_bytes(datatype, count, i as u32),
        };
        inputs.push(InferInputTensor {
            name: input.name.clone(),
            datatype: input.datatype.clone(),
            shape,
            ..Default::default()
        });
        raw.push(data);
    }
    Ok(ModelInferRequest {
        model_name: args.model.clone(),
        model_version: args.model_version.clone(),
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    })
}

/// FP32 in [0, 1); zeros for other types; BYTES as empty elements.
fn random_bytes(datatype: DataType, count: usize, seed: u32) -> Bytes {
    match datatype {
        DataType::Bytes => Bytes::from(vec![0u8; 4 * count]),
        DataType::Fp32 => {
            let mut state = 0x2545_F491u32 ^ seed.wrapping_mul(0x9E37_79B9);
            let mut out = Vec::with_capacity(count * 4);
            for _ in 0..count {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                out.extend_from_slice(&((state >> 8) as f32 / (1u32 << 24) as f32).to_le_bytes());
            }
            out.into()
        }
        other => Bytes::from(vec![0u8; count * other.element_size().unwrap_or(1)]),
    }
}
