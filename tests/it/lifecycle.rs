//! Health transitions and the drain: in-process, and the real binary under SIGTERM.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::*;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use wharf::{config::ServerConfig, grpc::pb};

fn slow_request() -> pb::ModelInferRequest {
    raw_request("slow", "x", &[1024, 1024], &vec![0.01; 1024 * 1024])
}

async fn health(
    channel: &tonic::transport::Channel,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(channel.clone());
    let answer = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(answer.into_inner().status())
}

/// Follows the health Watch stream until `service` reports `wanted` (health is updated by
/// a task of its own, a moment after the models change).
async fn reaches(channel: &tonic::transport::Channel, service: &str, wanted: ServingStatus) {
    let mut client = HealthClient::new(channel.clone());
    let request = HealthCheckRequest {
        service: service.into(),
    };
    let mut watch = client.watch(request).await.unwrap().into_inner();
    let follow = async {
        while let Some(update) = watch.next().await {
            if update.unwrap().status() == wanted {
                return;
            }
        }
        panic!("health stream for {service:?} ended before {wanted:?}");
    };
    tokio::time::timeout(Duration::from_secs(10), follow)
        .await
        .expect("health reaches the wanted state");
}

/// A Watch on the whole server's health (service "").
async fn watch_server(
    channel: &tonic::transport::Channel,
) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// A Watch on the server's health, once it is SERVING, past its first message (SERVING).
async fn watch_serving_server(
    channel: &tonic::transport::Channel,
) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    reaches(channel, "", ServingStatus::Serving).await;
    let mut watch = watch_server(channel).await;
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    watch
}

#[tokio::test]
async fn health_follows_models() {
    let t = TestServer::default().await;
    reaches(&t.channel, "", ServingStatus::Serving).await;
    let status = |s: &'static str| health(&t.channel, s);
    assert_eq!(
        status("inference.GRPCInferenceService").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(status("add_sub").await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        status("no_such_model").await.unwrap_err().code(),
        Code::NotFound
    );
    t.server.shutdown().await.unwrap();

    // A broken model is NOT_SERVING, and with strict readiness so is the server.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("broken/1")).unwrap();
    std::fs::write(dir.path().join("broken/1/model.onnx"), b"garbage").unwrap();
    let t = TestServer::start(ServerConfig::local(dir.path())).await;
    reaches(&t.channel, "broken", ServingStatus::NotServing).await;
    reaches(&t.channel, "", ServingStatus::NotServing).await;
    // Not ready, but alive: a liveness probe must not restart it.
    assert_eq!(
        health(&t.channel, wharf::app::LIVENESS_SERVICE)
            .await
            .unwrap(),
        ServingStatus::Serving
    );
    t.server.shutdown().await.unwrap();
}

/// A model loaded after start-up leaves the server ready (without strict readiness, as in
/// Triton): a pod stays in its Service while a model is swapped. And the health protocol's
/// Watch answers each change of status, so its watcher hears nothing until the drain.
#[tokio::test]
async fn loading_after_start_up_keeps_the_server_ready_and_repeats_no_status() {
    let dir = repository(&[
        (
            "quick",
            test_models().join("identity_fp32/1/model.onnx"),
            "max_batch_size: 8\n",
        ),
        // Its warm-up runs a ~350 ms call four times: LOADING for a second or more.
        (
            "slow_to_load",
            test_models().join("slow/1/model.onnx"),
            &slow_warmup_config(4),
        ),
    ]);
    let mut config = ServerConfig::local(dir.path());
    config.control.strict_readiness = false;
    config.control.model_control_mode = wharf::config::ControlMode::Explicit;
    config.control.load_model = vec!["quick".into()];
    let mut t = TestServer::start(config).await;
    let mut watch = watch_serving_server(&t.channel).await;

    let mut loader = t.client.clone();
    let load = tokio::spawn(async move {
        let request = pb::RepositoryModelLoadRequest {
            model_name: "slow_to_load".into(),
            ..Default::default()
        };
        loader.repository_model_load(request).await
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let index = t.index().await;
        let row = index.iter().find(|r| r.name == "slow_to_load");
        if row.is_some_and(|r| r.state == "LOADING") {
            break;
        }
        assert!(Instant::now() < deadline, "never seen LOADING: {index:?}");
        tokio::task::yield_now().await;
    }
    let ready = t.client.server_ready(pb::ServerReadyRequest {}).await;
    assert!(
        ready.unwrap().into_inner().ready,
        "not ready while a model loads"
    );
    assert_eq!(
        health(&t.channel, "").await.unwrap(),
        ServingStatus::Serving
    );
    load.await.unwrap().unwrap();
    let unload = pb::RepositoryModelUnloadRequest {
        model_name: "slow_to_load".into(),
        ..Default::default()
    };
    t.client.repository_model_unload(unload).await.unwrap();

    // A repeat would be waiting already, so the watch would answer it before the drain starts.
    let shutdown = tokio::spawn(t.server.shutdown());
    let next = watch.next().await.unwrap().unwrap().status();
    assert_eq!(
        next,
        ServingStatus::NotServing,
        "the watch repeated a status"
    );
    shutdown.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_finishes_admitted_requests_and_refuses_new_ones() {
    let t = TestServer::default().await;
    let mut watch = watch_serving_server(&t.channel).await;

    // Admit a request that takes a while, and make sure it is running before the drain.
    let mut client = t.client.clone();
    client.model_infer(slow_request()).await.unwrap(); // builds the plan
    wait_until_slow_is_idle(&t.server).await;
    let in_flight = tokio::spawn(async move { client.model_infer(slow_request()).await });
    wait_until_slow_is_busy(&t.server).await;

    let mut late = t.client.clone();
    let shutdown = tokio::spawn(t.server.shutdown());
    // Health turns NOT_SERVING as the drain starts.
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    // New requests are refused while the admitted one still runs.
    let refused = late.model_infer(add_sub_request()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    assert!(
        refused.message().contains("shutting down"),
        "{}",
        refused.message()
    );

    let answer = in_flight
        .await
        .unwrap()
        .expect("the admitted request is answered");
    assert_eq!(answer.into_inner().outputs[0].shape, vec![1024, 1024]);
    shutdown.await.unwrap().unwrap();
}

/// The binary, as Kubernetes runs it: SIGTERM drains and exits 0.
#[tokio::test]
async fn the_binary_drains_on_sigterm_and_exits_zero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ])
        .arg("--model-repository")
        .arg(test_models())
        // mimalloc's own variable outranks wharf's default of 100 ms, and is logged.
        .env("MIMALLOC_PURGE_DELAY", "10")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (addr, metrics_addr, purge_delay_ms) = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(&line).ok()?;
            let field = |key: &str| v["fields"][key].as_str().map(str::to_owned);
            Some((
                field("grpc_addr")?,
                field("metrics_addr")?,
                v["fields"]["purge_delay_ms"].as_i64(),
            ))
        })
        .expect("the bound ports are logged");
    assert_eq!(purge_delay_ms, Some(10));
    let metrics_addr: std::net::SocketAddr = metrics_addr.parse().unwrap();
    // Keep draining the child's log so it never blocks on a full pipe.
    let log = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = watch_server(&channel).await;
    while watch.next().await.unwrap().unwrap().status() != ServingStatus::Serving {}

    let mut client = pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX);
    client.model_infer(slow_request()).await.unwrap();
    wait_until_slow_is_idle_at(metrics_addr).await;
    let mut busy = client.clone();
    let in_flight = tokio::spawn(async move { busy.model_infer(slow_request()).await });
    wait_for_metric(metrics_addr, SLOW_BUSY, 1.0).await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    in_flight
        .await
        .unwrap()
        .expect("the admitted request is answered");
    // Requests during the drain are refused with a reason, on the open connection.
    let refused = client.model_infer(slow_request()).await.unwrap_err();
    assert!(
        matches!(refused.code(), Code::Unavailable | Code::Cancelled),
        "{refused:?}"
    );
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let log = log.join().unwrap().join("\n");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("draining"), "{log}");
}
