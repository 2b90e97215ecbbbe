//! The onnxruntime backend: parity with tract through the server, and each way loading it
//! can fail, while models on other backends keep serving. Needs ORT_DYLIB_PATH (the test
//! script points it at the onnxruntime==1.31.1 wheel's library) and the PP-OCR det and rec
//! models (scripts/fetch-ppocr-models.sh; the test script fetches them).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::common::*;
use wharf::config::ServerConfig;

fn library() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .expect("set ORT_DYLIB_PATH to libonnxruntime.so.1.31.1 (bash scripts/test.sh does)")
}

fn ppocr(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name);
    assert!(
        dir.join("1/model.onnx").exists(),
        "{} missing: run scripts/fetch-ppocr-models.sh",
        dir.display()
    );
    dir
}

/// Each PP-OCR model twice, once per engine, from the same file and config.
fn both_engines(dir: &Path) {
    for name in ["ppocr_cls", "ppocr_det", "ppocr_rec"] {
        let from = ppocr(name);
        let config = std::fs::read_to_string(from.join("config.yaml")).unwrap();
        for (suffix, backend) in [("tract", "tract"), ("ort", "onnxruntime")] {
            let to = dir.join(format!("{name}_{suffix}"));
            std::fs::create_dir_all(to.join("1")).unwrap();
            std::fs::copy(from.join("1/model.onnx"), to.join("1/model.onnx")).unwrap();
            std::fs::write(
                to.join("config.yaml"),
                config.replace("backend: tract", &format!("backend: {backend}")),
            )
            .unwrap();
        }
    }
}

fn pseudo_image(n: usize, seed: u32) -> Vec<f32> {
    let mut state = 0x1234_5678u32 ^ seed;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ppocr_models_agree_on_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    both_engines(dir.path());
    let mut config = ServerConfig::local(dir.path());
    config.load.onnxruntime_lib = Some(library());
    let mut t = TestServer::start(config).await;
    let index = t.index().await;
    for m in &index {
        assert_eq!(m.state, "READY", "{} {}", m.name, m.reason);
    }
    for (name, shape) in [
        ("ppocr_cls", [2, 3, 48, 192]),
        ("ppocr_det", [1, 3, 320, 416]),
        ("ppocr_rec", [2, 3, 48, 256]),
    ] {
        let values = pseudo_image(shape.iter().product::<i64>() as usize, shape[3] as u32);
        let mut outputs = Vec::new();
        for suffix in ["tract", "ort"] {
            let request = raw_request(&format!("{name}_{suffix}"), "x", &shape, &values);
            let response = t.client.model_infer(request).await.unwrap().into_inner();
            outputs.push((
                response.outputs[0].shape.clone(),
                f32s(&response.raw_output_contents[0]),
            ));
        }
        assert_eq!(outputs[0].0, outputs[1].0, "{name}: shapes differ");
        let diff = outputs[0]
            .1
            .iter()
            .zip(&outputs[1].1)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "{name}: max abs diff {diff}");
        assert!(outputs[0].1.iter().any(|v| *v != 0.0), "{name}: all zeros");
    }
    t.server.shutdown().await.unwrap();
}

/// `wharf check` in its own process: the library is opened once per process.
fn check(repo: &Path, library: Option<&Path>) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wharf"));
    command
        .arg("check")
        .arg("--model-repository")
        .arg(repo)
        .env_remove("ORT_DYLIB_PATH")
        // No library where wharf looks by default either (the set-up script puts one in
        // the data folder): only the one given counts.
        .env("XDG_DATA_HOME", repo.join(".no-data"));
    if let Some(library) = library {
        command.env("ORT_DYLIB_PATH", library);
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn repo_with_ort_model(config: &str) -> tempfile::TempDir {
    let dir = one_model_repository("ort", &test_models().join("add_sub/1/model.onnx"), config);
    let tract = dir.path().join("tract/1");
    std::fs::create_dir_all(&tract).unwrap();
    std::fs::copy(
        test_models().join("add_sub/1/model.onnx"),
        tract.join("model.onnx"),
    )
    .unwrap();
    dir
}

/// A library that says it is ONNX Runtime 1.20: built here with the C compiler, since no
/// old release can be fetched.
fn old_version_library(dir: &Path) -> PathBuf {
    let source = dir.join("old_ort.c");
    std::fs::write(
        &source,
        r#"typedef struct { const void* (*GetApi)(unsigned); const char* (*GetVersionString)(void); } OrtApiBase;
static const void* get_api(unsigned version) { (void)version; return 0; }
static const char* version_string(void) { return "1.20.0"; }
static const OrtApiBase base = { get_api, version_string };
const OrtApiBase* OrtGetApiBase(void) { return &base; }
"#,
    )
    .unwrap();
    let library = dir.join("libonnxruntime.so.1.20.0");
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .unwrap();
    assert!(built.success(), "cc failed");
    library
}

#[test]
fn each_way_of_failing_to_load_is_named_and_other_models_serve() {
    let scratch = tempfile::tempdir().unwrap();
    let old = old_version_library(scratch.path());
    let plain = "backend: onnxruntime\nmax_batch_size: 8\n";
    let dir = repo_with_ort_model(plain);
    let (ok, out) = check(dir.path(), Some(&library()));
    assert!(ok, "{out}");

    let cases: Vec<(Option<PathBuf>, &str, &str)> = vec![
        (
            None,
            plain,
            "needs the ONNX Runtime 1.31 library: none given (--onnxruntime-lib, ORT_DYLIB_PATH)",
        ),
        (
            Some("/nonexistent/libonnxruntime.so".into()),
            plain,
            "/nonexistent/libonnxruntime.so: no such file",
        ),
        (
            Some(library().with_file_name("libonnxruntime_providers_shared.so")),
            plain,
            "does not export `OrtGetApiBase`",
        ),
        (
            Some(old),
            plain,
            "expected version >= '1.31.x', but got '1.20.0'",
        ),
        (
            Some(library()),
            "backend: onnxruntime\ninstance_group: [{ kind: KIND_GPU, gpus: [0] }]\n",
            "KIND_GPU needs the CUDA execution provider",
        ),
        (
            Some(library()),
            "backend: onnxruntime\ninstance_group: [{ memory_budget: 1B }]\n",
            "memory_budget 1 B per instance is below what one call needs",
        ),
    ];
    for (library, config, expected) in cases {
        let dir = repo_with_ort_model(config);
        let (ok, out) = check(dir.path(), library.as_deref());
        assert!(!ok, "{out}");
        let ort_line = out
            .lines()
            .find(|l| l.starts_with("ort "))
            .unwrap_or_default();
        assert!(
            ort_line.contains("UNAVAILABLE") && ort_line.contains(expected),
            "{expected:?} not in {ort_line:?}"
        );
        let tract_line = out
            .lines()
            .find(|l| l.starts_with("tract "))
            .unwrap_or_default();
        assert!(tract_line.contains("READY"), "{tract_line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_budget_is_measured_from_the_arena_and_caps_the_rows() {
    // ONNX Runtime's arena holds the classifier's calls in 1 MiB at one row and 2 MiB at
    // two (its chunks round up): a 1.5 MiB budget allows one row per call.
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ppocr_cls");
    let config = std::fs::read_to_string(from.join("config.yaml"))
        .unwrap()
        .replace("backend: tract", "backend: onnxruntime")
        .replace(
            "- { count: 2, kind: KIND_CPU }",
            "- { count: 2, kind: KIND_CPU, memory_budget: 1536KiB }",
        );
    assert!(config.contains("memory_budget") && config.contains("onnxruntime"));
    let dir = one_model_repository("cls", &from.join("1/model.onnx"), &config);
    let mut server_config = ServerConfig::local(dir.path());
    server_config.load.onnxruntime_lib = Some(library());
    let mut t = TestServer::start(server_config).await;
    let (peaks, allowed) = t.batch_peaks("cls").await;
    assert!(peaks.len() >= 2 && peaks[0].1 > 0, "{peaks:?}");
    assert!(peaks.windows(2).all(|w| w[0].1 <= w[1].1), "{peaks:?}");
    let allowed: usize = allowed.parse().unwrap();
    let fits = peaks
        .iter()
        .filter(|(_, b)| *b <= 1536 << 10)
        .map(|(r, _)| *r)
        .max()
        .unwrap();
    assert_eq!(allowed, fits, "{peaks:?}");
    let crops = |rows: usize| {
        raw_request(
            "cls",
            "x",
            &[rows as i64, 3, 48, 192],
            &vec![0.5; rows * 3 * 48 * 192],
        )
    };
    t.client.model_infer(crops(allowed)).await.unwrap();
    let status = t.client.model_infer(crops(allowed + 1)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("its memory budget allows"),
        "{}",
        status.message()
    );
    t.server.shutdown().await.unwrap();
}

/// The GPU's session layout, run on the CPU provider so that CI keeps it honest: calls
/// padded to batch buckets, one session per bucket, inputs and outputs through IoBinding
/// (rebound when rec's width changes). Every answer must match a plain session's, for
/// every row count and whichever bucket served it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_sessions_through_io_binding_answer_as_a_plain_session() {
    let dir = tempfile::tempdir().unwrap();
    let layouts = [
        ("plain", ""),
        (
            "bound",
            "dynamic_batching: { max_queue_delay_microseconds: 100 }\n\
             parameters: { batch_buckets: { string_value: \"1,2,4,8\" }, io_binding: { string_value: \"true\" } }\n",
        ),
    ];
    for name in ["ppocr_cls", "ppocr_rec"] {
        let from = ppocr(name);
        let config = std::fs::read_to_string(from.join("config.yaml"))
            .unwrap()
            .replace("backend: tract", "backend: onnxruntime");
        for (suffix, extra) in layouts {
            let to = dir.path().join(format!("{name}_{suffix}"));
            std::fs::create_dir_all(to.join("1")).unwrap();
            std::fs::copy(from.join("1/model.onnx"), to.join("1/model.onnx")).unwrap();
            std::fs::write(to.join("config.yaml"), format!("{config}{extra}")).unwrap();
        }
    }
    let mut config = ServerConfig::local(dir.path());
    config.load.onnxruntime_lib = Some(library());
    let mut t = TestServer::start(config).await;
    for m in t.index().await {
        assert_eq!(m.state, "READY", "{} {}", m.name, m.reason);
    }
    let cases: [(&str, i64, i64); 8] = [
        ("ppocr_cls", 1, 192),
        ("ppocr_cls", 3, 192),
        ("ppocr_cls", 8, 192),
        ("ppocr_cls", 1, 192),
        ("ppocr_rec", 2, 320),
        ("ppocr_rec", 5, 320),
        ("ppocr_rec", 2, 160),
        ("ppocr_rec", 2, 320),
    ];
    for (i, (name, rows, width)) in cases.into_iter().enumerate() {
        let shape = [rows, 3, 48, width];
        let values = pseudo_image(shape.iter().product::<i64>() as usize, i as u32);
        let mut outputs = Vec::new();
        for (suffix, _) in layouts {
            let request = raw_request(&format!("{name}_{suffix}"), "x", &shape, &values);
            let response = t.client.model_infer(request).await.unwrap().into_inner();
            outputs.push((
                response.outputs[0].shape.clone(),
                f32s(&response.raw_output_contents[0]),
            ));
        }
        let case = format!("{name}, {rows} rows of width {width}");
        assert_eq!(outputs[0].0, outputs[1].0, "{case}: shapes differ");
        assert_eq!(outputs[0].0[0], rows, "{case}: the padding is left out");
        let diff = outputs[0]
            .1
            .iter()
            .zip(&outputs[1].1)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "{case}: max abs diff {diff}");
    }
    t.server.shutdown().await.unwrap();
}

/// `wharf engine-calls`, the GPU check's in-process probe, on the CPU provider: sessions per
/// size through IoBinding answer as a plain session (each call's input differs, so a stale
/// bound buffer would show), and every size is reported.
#[test]
fn the_engine_calls_probe_reports_every_size_and_agrees_with_a_plain_session() {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["engine-calls", "--model"])
        .arg(ppocr("ppocr_cls").join("1/model.onnx"))
        .args(["--onnxruntime-lib"])
        .arg(library())
        .args(["--input", "x:3,48,192", "--rows", "1,2,4", "--calls", "3"])
        .args(["--session-per-size", "--io-binding"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sizes: Vec<u64> = report["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rows"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, vec![1, 2, 4]);
    assert_eq!(
        report["calls"].as_array().unwrap().len(),
        9,
        "3 per size after the first"
    );
    for pair in report["max_abs_diff_vs_plain"].as_array().unwrap() {
        assert_eq!(pair[1].as_f64(), Some(0.0), "{pair}");
    }
    assert!(
        report["calls"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["shape_changed"] == false),
        "a session per size never changes shape"
    );
}

/// CUDA graphs asked for where they cannot hold: on a CPU, or with a free dim (a graph
/// replays one shape). Each is a load error naming the parameter and why; the other model
/// serves on.
#[test]
fn cuda_graphs_asked_for_where_they_cannot_hold_fail_the_load_by_name() {
    let graphs = "parameters: { cuda_graph: { string_value: \"true\" } }\n";
    let cases = [
        (
            format!("backend: onnxruntime\nmax_batch_size: 8\n{graphs}"),
            "parameters.cuda_graph: CUDA graphs need KIND_GPU",
        ),
        (
            format!(
                "backend: onnxruntime\nmax_batch_size: 8\n\
                 input: [{{ name: x, data_type: TYPE_FP32, dims: [3, 48, -1] }}]\n\
                 instance_group: [{{ kind: KIND_GPU }}]\n{graphs}"
            ),
            "input 'x' has dims [3, 48, -1] in the config",
        ),
    ];
    for (config, expected) in cases {
        let dir = repo_with_ort_model(&config);
        let (ok, out) = check(dir.path(), Some(&library()));
        assert!(!ok, "{out}");
        let line = out
            .lines()
            .find(|l| l.starts_with("ort"))
            .unwrap_or_default();
        assert!(line.contains(expected), "{line}");
        let tract = out.lines().find(|l| l.starts_with("tract")).unwrap();
        assert!(tract.contains("READY"), "{tract}");
    }
}
