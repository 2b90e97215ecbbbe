//! Faults contained where they happen, on a real server: an engine that panics or answers
//! with the wrong shape costs only the request that caused it; a load that panics or hangs
//! ends UNAVAILABLE while the others load, and a load asked for by RPC answers with its
//! cause's code; abandoned callers free their queue slots; a
//! drain answers every stream request read; request bytes in flight are budgeted; a
//! connection that sends half a preface is closed.

use std::{path::PathBuf, time::Duration};

use crate::common::*;
use futures::StreamExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::Code;
use wharf::{config::ServerConfig, grpc::pb};

fn faulty(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/faulty/{name}.onnx"))
}

fn index_request(indices: &[i64]) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "gather".into(),
        inputs: vec![input("index", "INT64", &[indices.len() as i64, 1])],
        raw_input_contents: vec![indices
            .iter()
            .flat_map(|i| i.to_le_bytes())
            .collect::<Vec<u8>>()
            .into()],
        ..Default::default()
    }
}

fn busy_request(values: usize) -> pb::ModelInferRequest {
    raw_request("busy", "x", &[values as i64], &vec![0.001; values])
}

async fn infer(
    mut client: Client,
    request: pb::ModelInferRequest,
) -> Result<tonic::Response<pb::ModelInferResponse>, tonic::Status> {
    client.model_infer(request).await
}

const GATHER: &str = "max_batch_size: 8\ninstance_group: [{ count: 1, kind: KIND_CPU }]\n\
                      dynamic_batching: { preferred_batch_size: [3], max_queue_delay_microseconds: 200000 }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_engine_panic_costs_only_the_request_that_caused_it() {
    let dir = repository(&[("gather", faulty("gather_index"), GATHER)]);
    let mut t = TestServer::start(ServerConfig::local(dir.path())).await;
    // Three requests batched together (the delay lets them meet); the middle one's index
    // is past the table, which makes tract panic.
    let (a, bad, c) = tokio::join!(
        infer(t.client.clone(), index_request(&[0])),
        infer(t.client.clone(), index_request(&[9])),
        infer(t.client.clone(), index_request(&[3])),
    );
    let bad = bad.expect_err("the out-of-range index fails");
    assert_eq!(bad.code(), Code::Internal, "{bad:?}");
    assert!(
        bad.message()
            .starts_with("model 'gather': the engine panicked: "),
        "{}",
        bad.message()
    );
    let rows =
        |r: tonic::Response<pb::ModelInferResponse>| f32s(&r.into_inner().raw_output_contents[0]);
    assert_eq!(
        rows(a.unwrap()),
        vec![0.0, 1.0, 2.0],
        "its batch-mates are answered"
    );
    assert_eq!(rows(c.unwrap()), vec![9.0, 10.0, 11.0]);
    // The instance serves on: more bad requests, then good ones, all answered at once.
    for _ in 0..5 {
        let e = t
            .client
            .model_infer(index_request(&[-99]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Internal);
    }
    let good = t.client.model_infer(index_request(&[1, 2])).await.unwrap();
    assert_eq!(rows(good), vec![3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
    let scraped = samples(&scrape(&t.server).await);
    let panics = scraped[r#"wharf_engine_panics_total{model="gather",version="1"}"#];
    assert!(panics >= 6.0, "each panic is counted: {panics}");
    assert_eq!(
        scraped[r#"wharf_requests_total{model="gather",version="1",protocol="grpc",outcome="backend_error"}"#],
        6.0,
        "only the bad requests failed"
    );
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_output_without_the_batch_dimension_is_an_error_naming_it() {
    let config = "max_batch_size: 8\ndynamic_batching: { max_queue_delay_microseconds: 100000 }\n";
    let dir = repository(&[
        ("scalar", faulty("scalar_out"), config),
        ("gather", faulty("gather_index"), GATHER),
    ]);
    let mut t = TestServer::start(ServerConfig::local(dir.path())).await;
    let request = |v| raw_request("scalar", "x", &[1, 4], &[v; 4]);
    let (one, two) = tokio::join!(
        infer(t.client.clone(), request(1.0)),
        infer(t.client.clone(), request(2.0)),
    );
    for answer in [one, two] {
        let e = answer.expect_err("a scalar cannot be split into rows");
        assert_eq!(e.code(), Code::Internal);
        assert_eq!(
            e.message(),
            "model 'scalar': the engine returned a wrong output: output 'y' has shape [], \
             whose first dimension should be the 1 rows the call carried"
        );
    }
    let good = t.client.model_infer(index_request(&[0])).await;
    assert!(good.is_ok(), "the server serves on: {good:?}");
    t.server.shutdown().await.unwrap();
}

/// tract may run a batch's rows one by one (where that measures faster); however it runs
/// them, rows that fold into other rows are an error naming the output, for the requests
/// that carry them only.
#[tokio::test]
async fn rows_that_fold_into_other_rows_are_an_error_naming_the_output() {
    let config = "max_batch_size: 8\ndynamic_batching: { max_queue_delay_microseconds: 100000 }\n";
    let dir = repository(&[("fold", faulty("fold_rows"), config)]);
    let mut t = TestServer::start(ServerConfig::local(dir.path())).await;
    let request = |width: usize| raw_request("fold", "x", &[1, width as i64], &vec![1.0; width]);
    // Two rows of 4 first: the multi-row call that chooses how rows run, and is answered.
    let (one, two) = tokio::join!(
        infer(t.client.clone(), request(4)),
        infer(t.client.clone(), request(4)),
    );
    for answer in [one, two] {
        assert_eq!(answer.unwrap().into_inner().outputs[0].shape, vec![1, 4]);
    }
    let (one, two) = tokio::join!(
        infer(t.client.clone(), request(8)),
        infer(t.client.clone(), request(8)),
    );
    for answer in [one, two] {
        let e = answer.expect_err("a row of 8 folds into two");
        assert_eq!(e.code(), Code::Internal, "{}", e.message());
        assert!(
            e.message().starts_with(
                "model 'fold': the engine returned a wrong output: output 'y' has shape"
            ),
            "{}",
            e.message()
        );
    }
    let good = t.client.model_infer(request(4)).await;
    assert!(good.is_ok(), "the server serves on: {good:?}");
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loads_that_panic_or_hang_end_unavailable_and_healthy_models_still_load() {
    let plain = "max_batch_size: 0\n";
    let dir = repository(&[
        ("load_gather", faulty("load_gather"), plain),
        ("load_range", faulty("load_range"), plain),
        ("load_slice", faulty("load_slice"), plain),
        ("load_tile", faulty("load_tile"), plain),
        // Its warmup runs a ~350 ms call eight times: 2.8 s or more in all.
        (
            "slow_to_load",
            test_models().join("slow/1/model.onnx"),
            &slow_warmup_config(8),
        ),
        (
            "healthy",
            test_models().join("identity_fp32/1/model.onnx"),
            "max_batch_size: 8\n",
        ),
    ]);
    let mut config = ServerConfig::local(dir.path());
    // Two loader threads: before, two stuck loads were enough to keep every model out.
    config.runtime.load_parallelism = Some(2);
    // Long enough for the healthy model on a busy machine, too short for slow_to_load.
    config.load.model_load_timeout = Duration::from_secs(1);
    let mut t = TestServer::start(config).await;
    let index = t.index().await;
    let state = |name: &str| {
        let row = index.iter().find(|r| r.name == name).unwrap();
        (row.state.clone(), row.reason.clone())
    };
    // Each makes tract panic while it optimises the graph (a constant Gather index out of
    // range, Range and Slice with a step of 0, Tile with a negative repeat).
    for name in ["load_gather", "load_range", "load_slice", "load_tile"] {
        let (state, reason) = state(name);
        assert_eq!(state, "UNAVAILABLE", "{name}: {reason}");
        assert!(reason.starts_with("loading panicked: "), "{name}: {reason}");
    }
    assert_eq!(
        state("slow_to_load"),
        (
            "UNAVAILABLE".to_string(),
            "loading did not finish within 1s (--model-load-timeout-secs)".to_string()
        )
    );
    assert_eq!(state("healthy").0, "READY");
    let answer = t
        .client
        .model_infer(raw_request("healthy", "INPUT0", &[1, 2], &[1.0, 2.0]))
        .await;
    assert!(answer.is_ok(), "{answer:?}");
    t.server.shutdown().await.unwrap();
}

/// A load asked for by RPC that fails answers with the code of its cause, and its message
/// names it: a panicking engine is INTERNAL, the load timeout DEADLINE_EXCEEDED, a GPU
/// budget that does not fit RESOURCE_EXHAUSTED, a missing model file NOT_FOUND, a config
/// that does not read INVALID_ARGUMENT. What serves keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_load_gets_the_code_of_its_cause() {
    let gpu = "backend: onnxruntime\ninstance_group: [{kind: KIND_GPU, gpus: [0], count: 1, memory_budget: 4GiB}]\n";
    let dir = repository(&[
        ("panics", faulty("load_gather"), "max_batch_size: 0\n"),
        (
            "slow_to_load",
            test_models().join("slow/1/model.onnx"),
            &slow_warmup_config(8),
        ),
        (
            "too_big",
            test_models().join("identity_fp32/1/model.onnx"),
            gpu,
        ),
        (
            "no_file",
            test_models().join("identity_fp32/1/model.onnx"),
            "max_batch_size: 8\n",
        ),
        (
            "bad_config",
            test_models().join("identity_fp32/1/model.onnx"),
            "max_batch_size: four\n",
        ),
        (
            "healthy",
            test_models().join("identity_fp32/1/model.onnx"),
            "max_batch_size: 8\n",
        ),
    ]);
    std::fs::remove_file(dir.path().join("no_file/1/model.onnx")).unwrap();
    let mut config = ServerConfig::local(dir.path());
    config.control.model_control_mode = wharf::config::ControlMode::Explicit;
    config.control.load_model = vec!["healthy".into()];
    config.load.model_load_timeout = Duration::from_secs(1);
    config.load.gpu_memory = vec![(0, bytesize::ByteSize::gib(1))];
    let mut t = TestServer::start(config).await;
    let cases = [
        ("panics", Code::Internal, "version 1: loading panicked: "),
        (
            "slow_to_load",
            Code::DeadlineExceeded,
            "did not finish within 1s",
        ),
        ("too_big", Code::ResourceExhausted, "more than its 1.0 GiB"),
        (
            "no_file",
            Code::NotFound,
            "no_file/1/model.onnx: no such model file",
        ),
        ("bad_config", Code::InvalidArgument, "key `max_batch_size`"),
    ];
    for (name, code, says) in cases {
        let request = pb::RepositoryModelLoadRequest {
            model_name: name.into(),
            ..Default::default()
        };
        let status = t.client.repository_model_load(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{name}: {}", status.message());
        assert!(
            status
                .message()
                .starts_with(&format!("failed to load '{name}': "))
                && status.message().contains(says),
            "{name}: {}",
            status.message()
        );
    }
    let answer = t
        .client
        .model_infer(raw_request("healthy", "INPUT0", &[1, 2], &[1.0, 2.0]))
        .await;
    assert!(answer.is_ok(), "{answer:?}");
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_who_leaves_frees_its_queue_slot_while_the_instance_is_busy() {
    let config = "max_batch_size: 0\nmodel_warmup: false\n\
                  instance_group: [{ count: 1, kind: KIND_CPU }]\n\
                  dynamic_batching: { default_queue_policy: { max_queue_size: 1 } }\n";
    let dir = repository(&[("slow", test_models().join("slow/1/model.onnx"), config)]);
    let t = TestServer::start(ServerConfig::local(dir.path())).await;
    let slow = || raw_request("slow", "x", &[1024, 1024], &vec![0.001; 1024 * 1024]);
    let pending = r#"wharf_pending_requests{model="slow",version="1"}"#;
    let busy = r#"wharf_instances_busy{model="slow",version="1"}"#;
    let cancelled =
        r#"wharf_requests_total{model="slow",version="1",protocol="grpc",outcome="cancelled"}"#;
    // One request on the only instance (a call takes a second or so), one more in the
    // queue's only slot, whose caller then leaves.
    let computing = tokio::spawn(infer(t.client.clone(), slow()));
    let server = &t.server;
    until(
        Duration::from_secs(20),
        "the instance is busy",
        async || metric(server, busy).await >= 1.0,
    )
    .await;
    let mut client = t.client.clone();
    let leaving = tokio::spawn(async move { client.model_infer(slow()).await });
    until(
        Duration::from_secs(20),
        "the request waits in the queue",
        async || metric(server, pending).await >= 1.0,
    )
    .await;
    leaving.abort();
    let executions = r#"wharf_executions_total{model="slow",version="1"}"#;
    let mut computed_by_then = f64::NAN;
    until(
        Duration::from_secs(20),
        "the slot is given back",
        async || {
            let now = samples(&scrape(server).await);
            computed_by_then = now.get(executions).copied().unwrap_or(0.0);
            now.get(cancelled).copied().unwrap_or(0.0) >= 1.0
        },
    )
    .await;
    // The worker counts an execution before it reports the instance free, so this holds
    // only if the slot came back while the first call was still running.
    assert_eq!(
        computed_by_then, 0.0,
        "the slot came back while the instance was busy, not when it next took a batch"
    );
    let admitted = t.client.clone().model_infer(slow()).await;
    assert!(
        admitted.is_ok(),
        "a new caller takes the slot: {admitted:?}"
    );
    assert!(computing.await.unwrap().is_ok());
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_answers_every_stream_request_it_has_read() {
    let config =
        "max_batch_size: 0\nmodel_warmup: false\ninstance_group: [{ count: 1, kind: KIND_CPU }]\n";
    let dir = repository(&[("busy", faulty("busy"), config)]);
    let mut t = TestServer::start(ServerConfig::local(dir.path())).await;
    const SENT: usize = 200;
    let requests = (0..SENT).map(|i| pb::ModelInferRequest {
        id: i.to_string(),
        ..busy_request(1)
    });
    let mut answers = t
        .client
        .model_stream_infer(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let first = answers.next().await.unwrap().unwrap();
    assert_eq!(first.error_message, "");
    // Most of the burst is still in the queue or unread when the drain starts.
    let TestServer { server, .. } = t;
    let stopping = tokio::spawn(server.shutdown());
    let (mut answered, mut refused) = (1, 0);
    let mut ids = vec![first.infer_response.unwrap().id];
    let mut ended = None;
    while let Some(item) = answers.next().await {
        match item {
            Ok(answer) => {
                answered += 1;
                if !answer.error_message.is_empty() {
                    assert_eq!(
                        answer.error_message,
                        "server is shutting down and takes no new requests"
                    );
                    refused += 1;
                }
                ids.push(answer.infer_response.unwrap().id);
            }
            Err(status) => ended = Some(status),
        }
    }
    stopping.await.unwrap().unwrap();
    let expected: Vec<String> = (0..answered).map(|i| i.to_string()).collect();
    assert_eq!(ids, expected, "answers in request order, none skipped");
    let ended = ended.expect("a stream closed by the drain does not end OK");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(
        refused > 0,
        "requests read during the drain are refused, not dropped"
    );
    assert!(answered <= SENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_bytes_in_flight_are_budgeted() {
    let config =
        "max_batch_size: 0\nmodel_warmup: false\ninstance_group: [{ count: 1, kind: KIND_CPU }]\n";
    let dir = repository(&[("busy", faulty("busy"), config)]);
    let mut config = ServerConfig::local(dir.path());
    config.limits.max_request_size = bytesize::ByteSize::mib(1);
    config.limits.max_inflight_bytes = bytesize::ByteSize::mib(1);
    let t = TestServer::start(config).await;
    // 600 KiB each: one fits the 1 MiB budget, two do not.
    let values = 600 * 1024 / 4;
    let mut client = t.client.clone();
    let holding = tokio::spawn(async move {
        for _ in 0..40 {
            // Some may meet the other requests' bytes and be refused themselves.
            let _ = client.model_infer(busy_request(values)).await;
        }
    });
    let server = &t.server;
    let busy = r#"wharf_instances_busy{model="busy",version="1"}"#;
    until(
        Duration::from_secs(20),
        "a request is computing",
        async || metric(server, busy).await >= 1.0,
    )
    .await;
    let mut refused = None;
    for _ in 0..20 {
        match t.client.clone().model_infer(busy_request(values)).await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(_) => continue, // the other's bytes had just been given back
        }
    }
    let refused = refused.expect("a second large request is refused while one is held");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().starts_with("a request of 600."),
        "{}",
        refused.message()
    );
    assert!(
        refused
            .message()
            .contains("KiB was refused: requests in flight hold "),
        "{}",
        refused.message()
    );
    assert!(refused
        .message()
        .contains("of the 1.0 MiB budget (--max-inflight-bytes)"));
    holding.await.unwrap();
    let refusals = metric(
        &t.server,
        r#"wharf_requests_refused_total{protocol="grpc",reason="inflight_bytes"}"#,
    )
    .await;
    assert!(refusals >= 1.0);
    // A stream message is held the same way, and refused in its own answer.
    let stream_budget = move |n| pb::ModelInferRequest {
        id: format!("s{n}"),
        ..busy_request(values)
    };
    let answers: Vec<pb::ModelStreamInferResponse> = t
        .client
        .clone()
        .model_stream_infer(futures::stream::iter((0..4).map(stream_budget)))
        .await
        .unwrap()
        .into_inner()
        .map(|a| a.unwrap())
        .collect()
        .await;
    assert_eq!(answers.len(), 4);
    assert!(
        answers
            .iter()
            .any(|a| a.error_message.contains("--max-inflight-bytes")),
        "the stream's concurrent messages pass the budget: at least one is refused"
    );
    assert!(answers.iter().any(|a| a.error_message.is_empty()));
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_that_sends_half_a_preface_is_closed() {
    let mut config = ServerConfig::local(test_models());
    config.listen.handshake_timeout = Duration::from_millis(300);
    let mut t = TestServer::start(config).await;
    let mut half = TcpStream::connect(t.server.grpc_addr()).await.unwrap();
    half.write_all(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..12])
        .await
        .unwrap();
    let mut buffer = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), half.read(&mut buffer)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed by the server: {closed:?}"
    );
    let live = t.client.server_live(pb::ServerLiveRequest {}).await;
    assert!(live.unwrap().into_inner().live, "whole clients are served");
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enormous_grpc_timeout_is_no_deadline_rather_than_a_panic() {
    let mut t = TestServer::default().await;
    let mut request = tonic::Request::new(add_sub_request());
    request
        .metadata_mut()
        .insert("grpc-timeout", "9999999999999999999S".parse().unwrap());
    let answer = t.client.model_infer(request).await;
    assert!(answer.is_ok(), "{answer:?}");
    t.server.shutdown().await.unwrap();
}
