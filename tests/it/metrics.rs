//! Prometheus metrics scraped over HTTP from a real server: each way a request can end is
//! counted once, under its own outcome, and the gauges follow the queue.

use std::{collections::HashMap, time::Duration};

use crate::common::*;
use tonic::Code;
use wharf::{config::ServerConfig, grpc::pb};

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("{series} not exported"))
}

fn outcome(samples: &HashMap<String, f64>, outcome: &str) -> f64 {
    value(
        samples,
        &format!(
            r#"wharf_requests_total{{model="slow",version="1",protocol="grpc",outcome="{outcome}"}}"#
        ),
    )
}

fn slow_request() -> pb::ModelInferRequest {
    raw_request("slow", "x", &[1024, 1024], &vec![0.01; 1024 * 1024])
}

fn with_timeout_us(mut request: pb::ModelInferRequest, us: i64) -> pb::ModelInferRequest {
    request.parameters.insert(
        "timeout".into(),
        pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(us)),
        },
    );
    request
}

#[tokio::test]
async fn each_request_is_counted_once_under_how_it_ended() {
    let yaml = "max_batch_size: 0\ninstance_group: [{count: 1}]\n\
                dynamic_batching: {default_queue_policy: {max_queue_size: 1, allow_timeout_override: true}}\n";
    let dir = one_model_repository("slow", &test_models().join("slow/1/model.onnx"), yaml);
    let t = TestServer::start(ServerConfig::local(dir.path())).await;
    let client = || t.client.clone();

    // Before any request: the model is ready, its gauges are set, nothing counted.
    let before = samples(&scrape(&t.server).await);
    assert_eq!(
        value(&before, r#"wharf_model_ready{model="slow",version="1"}"#),
        1.0
    );
    assert_eq!(
        value(&before, r#"wharf_instances{model="slow",version="1"}"#),
        1.0
    );
    assert_eq!(
        value(
            &before,
            r#"wharf_queue_capacity_requests{model="slow",version="1"}"#
        ),
        1.0
    );
    assert_eq!(outcome(&before, "success"), 0.0);
    assert!(before.keys().any(|k| k.starts_with("wharf_build_info{")));
    // No budget configured: no budget series (a 0 would read as a budget of nothing).
    assert!(!before
        .keys()
        .any(|k| k.starts_with("wharf_memory_budget_bytes")));

    // 2 successes.
    for _ in 0..2 {
        client().model_infer(slow_request()).await.unwrap();
    }
    // 1 invalid: the wrong datatype.
    let mut wrong = slow_request();
    wrong.inputs[0].datatype = "INT32".into();
    let status = client().model_infer(wrong).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // 1 refused before any model: the name is unknown.
    let mut unknown = slow_request();
    unknown.model_name = "nope".into();
    assert_eq!(
        client().model_infer(unknown).await.unwrap_err().code(),
        Code::NotFound
    );

    // 1 timeout: queued behind a busy instance with 1 ms to wait.
    let mut busy = client();
    wait_until_slow_is_idle(&t.server).await;
    let running = tokio::spawn(async move { busy.model_infer(slow_request()).await });
    wait_until_slow_is_busy(&t.server).await;
    let status = client()
        .model_infer(with_timeout_us(slow_request(), 1000))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    running.await.unwrap().unwrap();

    // 1 cancelled: queued behind a busy instance, then its caller gives up.
    let mut busy = client();
    wait_until_slow_is_idle(&t.server).await;
    let running = tokio::spawn(async move { busy.model_infer(slow_request()).await });
    wait_until_slow_is_busy(&t.server).await;
    let mut leaving = client();
    let waiting = tokio::spawn(async move { leaving.model_infer(slow_request()).await });
    // Leave only once the request is admitted and queued: before that it never reached
    // the model, and nothing should count it.
    let pending = r#"wharf_pending_requests{model="slow",version="1"}"#;
    while value(&samples(&scrape(&t.server).await), pending) < 1.0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    running.await.unwrap().unwrap();

    // Some refused for a full queue: 12 at once, one instance, room for one waiting.
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let mut c = client();
            tokio::spawn(async move { c.model_infer(slow_request()).await })
        })
        .collect();
    let (mut ok, mut full) = (0.0, 0.0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1.0,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
                full += 1.0;
            }
        }
    }
    assert!(full >= 1.0);

    let after = samples(&scrape(&t.server).await);
    let successes = 2.0 + 2.0 + ok; // two before, the two busy ones, the admitted of 12
    assert_eq!(outcome(&after, "success"), successes);
    assert_eq!(outcome(&after, "invalid"), 1.0);
    assert_eq!(outcome(&after, "timeout"), 1.0);
    assert_eq!(outcome(&after, "cancelled"), 1.0);
    assert_eq!(outcome(&after, "queue_full"), full);
    assert_eq!(outcome(&after, "backend_error"), 0.0);
    assert_eq!(
        value(
            &after,
            r#"wharf_requests_refused_total{protocol="grpc",reason="unknown_model"}"#
        ),
        1.0
    );
    let series = |name: &str| format!(r#"{name}{{model="slow",version="1"}}"#);
    // Without a batch dimension every computed request is its own engine call.
    assert_eq!(value(&after, &series("wharf_executions_total")), successes);
    assert_eq!(value(&after, &series("wharf_inferences_total")), successes);
    assert_eq!(
        value(
            &after,
            r#"wharf_request_duration_seconds_count{model="slow",version="1",protocol="grpc"}"#
        ),
        successes
    );
    assert_eq!(
        value(&after, &series("wharf_compute_duration_seconds_count")),
        successes
    );
    assert_eq!(value(&after, &series("wharf_batch_rows_count")), successes);
    // The instance tells the scheduler it is free just after it answers: allow a moment.
    let mut idle = after;
    for _ in 0..50 {
        let busy = value(&idle, &series("wharf_instances_busy"));
        if busy == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        idle = samples(&scrape(&t.server).await);
    }
    assert_eq!(value(&idle, &series("wharf_pending_requests")), 0.0);
    assert_eq!(value(&idle, &series("wharf_instances_busy")), 0.0);
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn saturation_rises_past_one_when_the_backlog_exceeds_the_objective() {
    // 1 ms objective: one slow request alone is many objectives of work.
    let yaml = "max_batch_size: 0\ninstance_group: [{count: 1}]\n\
                parameters: {latency_objective_ms: {string_value: \"1\"}}\n\
                dynamic_batching: {default_queue_policy: {max_queue_size: 2}}\n";
    let dir = one_model_repository("slow", &test_models().join("slow/1/model.onnx"), yaml);
    let t = TestServer::start(ServerConfig::local(dir.path())).await;
    let saturation = |s: &HashMap<String, f64>| value(s, "wharf_saturation_ratio");
    assert_eq!(saturation(&samples(&scrape(&t.server).await)), 0.0);

    let load: Vec<_> = (0..8)
        .map(|_| {
            let mut c = t.client.clone();
            tokio::spawn(async move {
                for _ in 0..6 {
                    let _ = c.model_infer(slow_request()).await;
                }
            })
        })
        .collect();
    // Until the backlog is past the objective (it is at once: 8 slow requests, a 1 ms
    // objective), read while the load still runs.
    wait_for_metric(
        t.server.metrics_addr(),
        "wharf_saturation_ratio",
        1.0 + 1e-9,
    )
    .await;
    let busy = samples(&scrape(&t.server).await);
    for l in load {
        l.await.unwrap();
    }
    assert!(saturation(&busy) > 1.0, "{}", saturation(&busy));
    assert_eq!(
        saturation(&busy),
        value(
            &busy,
            r#"wharf_model_saturation_ratio{model="slow",version="1"}"#
        )
    );
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn http_probes_follow_readiness() {
    let t = TestServer::default().await;
    assert_eq!(get(&t.server, "/live").await.0, 200);
    assert_eq!(get(&t.server, "/ready").await.0, 200);
    assert_eq!(get(&t.server, "/nothing").await.0, 404);
    t.server.shutdown().await.unwrap();

    // Strict readiness with a model that cannot load: live, never ready.
    let dir = one_model_repository(
        "broken",
        &test_models().join("slow/1/model.onnx"),
        "max_batch_size: nope\n",
    );
    let t = TestServer::start(ServerConfig::local(dir.path())).await;
    assert_eq!(get(&t.server, "/live").await.0, 200);
    let (code, _, body) = get(&t.server, "/ready").await;
    assert_eq!((code, body.as_str()), (503, "not ready\n"));
    let ready = samples(&scrape(&t.server).await);
    assert_eq!(
        value(&ready, r#"wharf_model_ready{model="broken",version=""}"#),
        0.0
    );
    t.server.shutdown().await.unwrap();
}
