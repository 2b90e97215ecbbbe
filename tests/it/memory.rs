//! The memory budget per instance is measured against, not just configured: too small a
//! budget fails the load with both numbers; a tight one lowers the rows a call may carry.

use std::path::Path;

use crate::common::*;
use tonic::Code;
use wharf::config::ServerConfig;

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

/// An identity over 256 KiB rows: whether tract runs its batches whole or row by row, a
/// call holds its rows' input and output copies, so what it needs grows with the rows.
/// (The classifier no longer does: tract runs its rows one by one, through one plan.)
fn wide_repository(budget: &str) -> tempfile::TempDir {
    let identity = test_models().join("identity_fp32/1/model.onnx");
    let config = format!(
        "backend: tract
max_batch_size: 8
input: [{{ name: INPUT0, data_type: TYPE_FP32, dims: [65536] }}]
output: [{{ name: OUTPUT0, data_type: TYPE_FP32, dims: [65536] }}]
instance_group: [{{ count: 1, kind: KIND_CPU, memory_budget: {budget} }}]
model_warmup: true
"
    );
    one_model_repository("wide", &identity, &config)
}

#[tokio::test]
async fn a_tight_budget_lowers_the_rows_per_call() {
    let dir = wide_repository("3MiB");
    let mut t = TestServer::start(ServerConfig::local(dir.path())).await;
    let (peaks, allowed) = t.batch_peaks("wide").await;
    let allowed: usize = allowed.parse().unwrap();
    // The most rows whose measured peak fits, and fewer than the model's 8.
    let fitting = peaks
        .iter()
        .filter(|(_, bytes)| *bytes <= 3 << 20)
        .map(|(rows, _)| *rows)
        .max();
    assert_eq!(Some(allowed), fitting, "peaks: {peaks:?}");
    assert!((1..8).contains(&allowed), "peaks: {peaks:?}");

    let wide = |rows: usize| {
        raw_request(
            "wide",
            "INPUT0",
            &[rows as i64, 65536],
            &vec![0.5; rows * 65536],
        )
    };
    t.client.model_infer(wide(allowed)).await.unwrap();
    let status = t.client.model_infer(wide(8)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains(&format!("its memory budget allows {allowed} rows per call")),
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
