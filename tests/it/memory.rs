//! The memory budget per instance is measured against, not just configured: too small a
//! budget fails the load with both numbers; a tight one lowers the rows a call may carry.

use std::path::Path;

use crate::common::*;
use tonic::Code;
use wharf::{config::ServerConfig, grpc::pb};

fn cls_repository(budget: &str) -> tempfile::TempDir {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ppocr_cls");
    let config = std::fs::read_to_string(from.join("config.yaml"))
        .unwrap()
        // Budgets are measured on tract here, whichever engines the shipped config prefers.
        .replace("backend: [onnxruntime, tract]", "backend: tract")
        .replace(
            "- { count: 2, kind: KIND_CPU }",
            &format!("- {{ count: 2, kind: KIND_CPU, memory_budget: {budget} }}"),
        );
    assert!(
        config.contains("memory_budget"),
        "the test config must set the budget"
    );
    one_model_repository("cls", &from.join("1/model.onnx"), &config)
}

fn crops(rows: usize) -> pb::ModelInferRequest {
    raw_request(
        "cls",
        "x",
        &[rows as i64, 3, 48, 192],
        &vec![0.5; rows * 3 * 48 * 192],
    )
}

#[tokio::test]
async fn a_budget_below_one_row_fails_the_load_with_both_numbers() {
    let dir = cls_repository("64KiB");
    let mut t = TestServer::start(ServerConfig::local(dir.path())).await;
    let index = t.index().await;
    let reason = &index[0].reason;
    assert_eq!(index[0].state, "UNAVAILABLE");
    assert!(
        reason.contains("memory_budget 64.0 KiB per instance is below what one call needs"),
        "{reason}"
    );
    assert!(reason.contains("measured at batch 1"), "{reason}");
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_tight_budget_lowers_the_rows_per_call() {
    // One row of the classifier peaks near 400 KiB and grows with the rows: 1 MiB holds 2.
    let dir = cls_repository("1MiB");
    let mut t = TestServer::start(ServerConfig::local(dir.path())).await;
    let (peaks, allowed) = t.batch_peaks("cls").await;
    assert_eq!(allowed, "2", "peaks: {peaks:?}");
    assert!(
        peaks.iter().all(|(r, b)| (*r <= 2) == (*b <= 1 << 20)),
        "{peaks:?}"
    );

    t.client.model_infer(crops(2)).await.unwrap();
    let status = t.client.model_infer(crops(4)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("its memory budget allows 2 rows per call"),
        "{}",
        status.message()
    );
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_budget_without_a_shape_to_measure_is_refused() {
    let identity = test_models().join("identity_fp32/1/model.onnx");
    let dir = one_model_repository(
        "open",
        &identity,
        "instance_group: [{ memory_budget: 1GiB }]\n",
    );
    let mut t = TestServer::start(ServerConfig::local(dir.path())).await;
    let index = t.index().await;
    assert!(
        index[0]
            .reason
            .contains("cannot be enforced: no warm shape to measure"),
        "{}",
        index[0].reason
    );
    t.server.shutdown().await.unwrap();
}
