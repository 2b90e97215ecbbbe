//! Dynamic batching end to end: concurrent clients with mixed shapes against a real model.

use crate::common::*;
use wharf::{
    config::ServerConfig,
    grpc::pb::{self, ModelInferRequest},
};

fn repository(config: &str) -> tempfile::TempDir {
    one_model_repository(
        "identity",
        &test_models().join("identity_fp32/1/model.onnx"),
        config,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mixed_shapes_are_batched_and_each_gets_its_own_answer() {
    let dir = repository(
        "max_batch_size: 8\ndynamic_batching: { preferred_batch_size: [4, 8], max_queue_delay_microseconds: 50000 }\n\
         instance_group: [{ count: 1 }]\n",
    );
    let t = TestServer::start(ServerConfig::local(dir.path())).await;
    let calls: Vec<_> = (0..48)
        .map(|i| {
            let mut client = t.client.clone();
            // Two shapes, [1, 3] and [2, 5], interleaved; values identify the request.
            let (rows, width) = if i % 2 == 0 { (1, 3) } else { (2, 5) };
            let values: Vec<f32> = (0..rows * width).map(|j| (i * 100 + j) as f32).collect();
            let request = raw_request("identity", "INPUT0", &[rows as i64, width as i64], &values);
            tokio::spawn(async move {
                let response = client.model_infer(request).await.unwrap().into_inner();
                assert_eq!(response.outputs[0].shape, vec![rows as i64, width as i64]);
                assert_eq!(
                    f32s(&response.raw_output_contents[0]),
                    values,
                    "request {i} got another's answer"
                );
                rows
            })
        })
        .collect();
    let mut rows_sent = 0;
    for call in calls {
        rows_sent += call.await.unwrap() as u64;
    }

    let mut client = t.client.clone();
    let stats = client
        .model_statistics(pb::ModelStatisticsRequest {
            name: "identity".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let s = &stats.model_stats[0];
    assert_eq!(s.inference_count, rows_sent);
    assert!(
        s.execution_count * 2 <= 48,
        "48 requests ran in {} executions",
        s.execution_count
    );
    let success = s.inference_stats.as_ref().unwrap().success.unwrap();
    assert_eq!(success.count, 48);
    for b in &s.batch_stats {
        assert!(b.batch_size <= 8, "a batch of {} rows", b.batch_size);
    }
    assert!(
        s.batch_stats.iter().any(|b| b.batch_size >= 4),
        "{:?}",
        s.batch_stats
    );
    let executions: u64 = s
        .batch_stats
        .iter()
        .map(|b| b.compute_infer.unwrap().count)
        .sum();
    assert_eq!(executions, s.execution_count);
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn queue_policy_timeouts_and_priorities_are_checked() {
    let dir = repository(
        "max_batch_size: 4\ndynamic_batching: { priority_levels: 2, default_queue_policy: { allow_timeout_override: true } }\n",
    );
    let mut t = TestServer::start(ServerConfig::local(dir.path())).await;
    let with_param = |key: &str, value: pb::infer_parameter::ParameterChoice| {
        let mut r: ModelInferRequest = raw_request("identity", "INPUT0", &[1, 2], &[1.0, 2.0]);
        r.parameters.insert(
            key.into(),
            pb::InferParameter {
                parameter_choice: Some(value),
            },
        );
        r
    };
    use pb::infer_parameter::ParameterChoice::*;
    t.client
        .model_infer(with_param("priority", Uint64Param(1)))
        .await
        .unwrap();
    let status = t
        .client
        .model_infer(with_param("priority", Uint64Param(3)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("priority 3 is out of range: the model has priority levels 1 to 2"),
        "{}",
        status.message()
    );
    let status = t
        .client
        .model_infer(with_param("timeout", StringParam("soon".into())))
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .contains("parameter 'timeout' must be a non-negative integer"),
        "{}",
        status.message()
    );
    // A too-large request is refused at once, never queued.
    let status = t
        .client
        .model_infer(raw_request("identity", "INPUT0", &[5, 1], &[0.0; 5]))
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .contains("batch size 5 but model 'identity' takes 1 to 4"),
        "{}",
        status.message()
    );
    t.server.shutdown().await.unwrap();
}
