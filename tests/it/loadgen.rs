//! `wharf bench` against the real server: it measures what it sends and counts failures by
//! their gRPC code.

use crate::common::*;
use serde_json::Value;

fn args(t: &TestServer, extra: &[&str]) -> Vec<String> {
    let url = t.server.grpc_addr().to_string();
    let mut argv = vec![
        "bench",
        "--json",
        "--url",
        &url,
        "--warmup-secs",
        "0.1",
        "--duration-secs",
        "0.5",
    ];
    argv.extend_from_slice(extra);
    argv.into_iter().map(str::to_owned).collect()
}

/// Runs the `wharf bench` command: its JSON report, or what it said on failing.
async fn run(args: Vec<String>) -> Result<Value, String> {
    let bench = move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(args)
            .output()
    };
    // Off the async threads: the server under test shares them.
    let out = tokio::task::spawn_blocking(bench)
        .await
        .unwrap()
        .expect("wharf runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).expect("a JSON report"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_and_open_loops_report_what_they_sent() {
    let t = TestServer::default().await;
    let closed = run(args(&t, &["--model", "add_sub", "--concurrency", "4"]))
        .await
        .unwrap();
    assert!(closed["requests"].as_u64() > Some(10), "{closed}");
    assert_eq!(closed["errors"], serde_json::json!({}), "{closed}");
    let ms = |key: &str| closed[key].as_f64().unwrap();
    assert!(ms("p50_ms") > 0.0 && ms("p50_ms") <= ms("p99_ms") && ms("p99_ms") <= ms("max_ms"));

    let open = run(args(
        &t,
        &[
            "--model",
            "identity_fp32",
            "--shape",
            "INPUT0:2,8",
            "--rate",
            "200",
            "--count",
            "50",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(open["requests"], 50, "{open}");
    assert_eq!(open["rows_per_request"], 2);
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_for_a_one_element_bytes_input_is_that_element() {
    let t = TestServer::default().await;
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page.bin");
    // Any content, framing bytes included: it travels as one element, unread.
    std::fs::write(&page, [7u8, 0, 0, 0, 1, 2, 3]).unwrap();
    let file = format!("INPUT0:{}", page.display());
    let report = run(args(
        &t,
        &[
            "--model",
            "identity_bytes",
            "--shape",
            "INPUT0:1,1",
            "--data-file",
            &file,
            "--count",
            "5",
        ],
    ))
    .await
    .unwrap();
    assert_eq!(report["requests"], 5, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    t.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_code() {
    let t = TestServer::default().await;
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.bin");
    std::fs::write(&short, [0u8; 7]).unwrap(); // 7 bytes for a [1, 4] FP32 input
    let file = format!("INPUT0:{}", short.display());
    let report = run(args(
        &t,
        &["--model", "add_sub", "--data-file", &file, "--count", "20"],
    ))
    .await
    .unwrap();
    assert_eq!(report["errors"]["InvalidArgument"], 20, "{report}");
    assert_eq!(report["throughput_rps"], 0.0);
    let missing = run(args(&t, &["--model", "identity_fp32"]))
        .await
        .unwrap_err();
    assert!(missing.contains("give --shape INPUT0:"), "{missing}");
    t.server.shutdown().await.unwrap();
}
