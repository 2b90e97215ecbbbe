//! Ensembles (`platform: ensemble`) on the real server: steps over other models' queues,
//! fan-out split to the step model's batch limit, errors naming the step, callers who
//! leave, the byte bound between steps, a subset of outputs, metrics, and load errors.

use std::{path::Path, time::Duration};

use crate::common::*;
use tonic::Code;
use wharf::{config::ServerConfig, grpc::pb};

/// `(name, config)` of each ensemble, written beside the step models with an empty
/// version folder, as Triton lays ensembles out.
fn add_ensembles(root: &Path, ensembles: &[(&str, &str)]) {
    for (name, config) in ensembles {
        std::fs::create_dir_all(root.join(name).join("1")).unwrap();
        std::fs::write(root.join(name).join("config.yaml"), config).unwrap();
    }
}

const FAN: &str = "platform: ensemble
max_batch_size: 0
input: [{ name: x, data_type: TYPE_FP32, dims: [-1, 4] }]
output: [{ name: y, data_type: TYPE_FP32, dims: [-1, 4] }]
ensemble_scheduling:
  step:
    - { model_name: identity, model_version: -1, input_map: { INPUT0: x }, output_map: { OUTPUT0: y } }
";

/// Two steps in parallel (add_sub, identity), then one that reads both.
const PAIR: &str = "platform: ensemble
input:
  - { name: a, data_type: TYPE_FP32, dims: [-1, 4] }
  - { name: b, data_type: TYPE_FP32, dims: [-1, 4] }
output:
  - { name: total, data_type: TYPE_FP32, dims: [-1, 4] }
  - { name: diff, data_type: TYPE_FP32, dims: [-1, 4] }
  - { name: copy, data_type: TYPE_FP32, dims: [-1, 4] }
ensemble_scheduling:
  step:
    - { model_name: add_sub, input_map: { INPUT0: a, INPUT1: b }, output_map: { OUTPUT0: sum, OUTPUT1: diff } }
    - { model_name: identity, input_map: { INPUT0: a }, output_map: { OUTPUT0: copy } }
    - { model_name: add_sub, input_map: { INPUT0: sum, INPUT1: copy }, output_map: { OUTPUT0: total } }
";

/// add_sub takes [b, 4]; any other width fails in its step.
const MISMATCH: &str = "platform: ensemble
input: [{ name: x, data_type: TYPE_FP32, dims: [-1, -1] }]
output: [{ name: y, data_type: TYPE_FP32, dims: [-1, -1] }]
ensemble_scheduling:
  step:
    - { model_name: add_sub, input_map: { INPUT0: x, INPUT1: x }, output_map: { OUTPUT0: y } }
";

/// The slow model, then identity: a caller who leaves during the first spares the second.
const SLOW_CHAIN: &str = "platform: ensemble
input: [{ name: x, data_type: TYPE_FP32, dims: [1024, 1024] }]
output: [{ name: z, data_type: TYPE_FP32, dims: [1024, 1024] }]
ensemble_scheduling:
  step:
    - { model_name: slow, input_map: { x: x }, output_map: { y: t } }
    - { model_name: identity, input_map: { INPUT0: t }, output_map: { OUTPUT0: z } }
";

/// Two copies of the input held at once, under a 1 KiB bound.
const BOUNDED: &str = "platform: ensemble
input: [{ name: x, data_type: TYPE_FP32, dims: [-1, 4] }]
output:
  - { name: a, data_type: TYPE_FP32, dims: [-1, 4] }
  - { name: b, data_type: TYPE_FP32, dims: [-1, 4] }
ensemble_scheduling:
  step:
    - { model_name: identity, input_map: { INPUT0: x }, output_map: { OUTPUT0: a } }
    - { model_name: identity, input_map: { INPUT0: x }, output_map: { OUTPUT0: b } }
parameters: { max_intermediate_bytes: { string_value: 1KiB } }
";

async fn ensemble_server() -> (TestServer, tempfile::TempDir) {
    let models = test_models();
    let slow_config = std::fs::read_to_string(models.join("slow/config.yaml")).unwrap();
    let dir = repository(&[
        ("identity", models.join("identity_fp32/1/model.onnx"), ""),
        (
            "add_sub",
            models.join("add_sub/1/model.onnx"),
            "max_batch_size: 8\n",
        ),
        ("slow", models.join("slow/1/model.onnx"), &slow_config),
    ]);
    add_ensembles(
        dir.path(),
        &[
            ("fan", FAN),
            ("pair", PAIR),
            ("mismatch", MISMATCH),
            ("slow_chain", SLOW_CHAIN),
            ("bounded", BOUNDED),
        ],
    );
    let t = TestServer::start(ServerConfig::local(dir.path())).await;
    (t, dir)
}

fn rows(n: usize) -> Vec<f32> {
    (0..n * 4).map(|i| i as f32).collect()
}

fn output(response: &pb::ModelInferResponse, name: &str) -> Vec<f32> {
    let i = response
        .outputs
        .iter()
        .position(|o| o.name == name)
        .unwrap_or_else(|| panic!("no output {name}"));
    f32s(&response.raw_output_contents[i])
}

fn pair_request(n: usize, outputs: &[&str]) -> pb::ModelInferRequest {
    let values = rows(n);
    let doubled: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
    pb::ModelInferRequest {
        model_name: "pair".into(),
        inputs: vec![
            input("a", "FP32", &[n as i64, 4]),
            input("b", "FP32", &[n as i64, 4]),
        ],
        raw_input_contents: vec![fp32_bytes(&values).into(), fp32_bytes(&doubled).into()],
        outputs: outputs.iter().map(|o| requested(o)).collect(),
        ..Default::default()
    }
}

fn series(name: &str, model: &str) -> String {
    format!(r#"{name}{{model="{model}",version="1"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ensemble_is_served_like_a_model_and_fans_rows_out_to_its_steps_limit() {
    let (mut t, _dir) = ensemble_server().await;
    let meta = t
        .client
        .model_metadata(pb::ModelMetadataRequest {
            name: "fan".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.platform, "ensemble");
    assert_eq!(meta.inputs[0].shape, vec![-1, 4]);
    let ready = t
        .client
        .model_ready(pb::ModelReadyRequest {
            name: "fan".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ready.ready);
    let config = t.model_config("fan").await;
    let Some(pb::model_config::SchedulingChoice::EnsembleScheduling(steps)) =
        config.scheduling_choice
    else {
        panic!("no ensemble_scheduling in {config:?}");
    };
    assert_eq!(steps.step[0].model_name, "identity");
    assert_eq!(steps.step[0].input_map["INPUT0"], "x");

    // identity (no config: Triton's default max_batch_size 4) takes at most 4 rows a
    // call: 0 rows call nothing, 60 rows take 15 calls.
    let executions = series("wharf_executions_total", "identity");
    let batch_rows = series("wharf_batch_rows_count", "identity");
    for n in [0usize, 1, 7, 8, 9, 17, 60] {
        let before = metric(&t.server, &executions).await;
        let response = t
            .client
            .model_infer(raw_request("fan", "x", &[n as i64, 4], &rows(n)))
            .await
            .unwrap_or_else(|e| panic!("{n} rows: {e}"))
            .into_inner();
        assert_eq!(response.outputs[0].shape, vec![n as i64, 4], "{n} rows");
        assert_eq!(
            output(&response, "y"),
            rows(n),
            "{n} rows come back in order"
        );
        let calls = metric(&t.server, &executions).await - before;
        assert_eq!(calls as usize, n.div_ceil(4), "{n} rows");
    }
    let scraped = samples(&scrape(&t.server).await);
    let sum = scraped[&series("wharf_batch_rows_sum", "identity")];
    assert_eq!(sum, 102.0, "every row computed once");
    assert_eq!(scraped[&batch_rows], 28.0, "calls of at most 4 rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_steps_feed_a_joining_step_and_a_subset_of_outputs_runs_only_its_steps() {
    let (mut t, _dir) = ensemble_server().await;
    let response = t
        .client
        .model_infer(pair_request(3, &[]))
        .await
        .unwrap()
        .into_inner();
    let a = rows(3);
    let names: Vec<&str> = response.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["total", "diff", "copy"], "the declared order");
    let total: Vec<f32> = a.iter().map(|v| v * 4.0).collect();
    let diff: Vec<f32> = a.iter().map(|v| -v).collect();
    assert_eq!(output(&response, "total"), total, "(a + 2a) + a");
    assert_eq!(output(&response, "diff"), diff);
    assert_eq!(output(&response, "copy"), a);

    // Only `copy`: identity runs, add_sub does not.
    let add_sub = series("wharf_executions_total", "add_sub");
    let identity = series("wharf_executions_total", "identity");
    let (add_before, id_before) = (
        metric(&t.server, &add_sub).await,
        metric(&t.server, &identity).await,
    );
    let response = t
        .client
        .model_infer(pair_request(2, &["copy"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(output(&response, "copy"), rows(2));
    assert_eq!(metric(&t.server, &add_sub).await, add_before);
    assert_eq!(metric(&t.server, &identity).await, id_before + 1.0);

    // Each step model's time is within the ensemble's, though two steps ran at once.
    for _ in 0..20 {
        t.client.model_infer(pair_request(4, &[])).await.unwrap();
    }
    let scraped = samples(&scrape(&t.server).await);
    let over_grpc = |name: &str, model: &str| {
        format!(r#"{name}{{model="{model}",version="1",protocol="grpc"}}"#)
    };
    let took = |model: &str| scraped[&over_grpc("wharf_request_duration_seconds_sum", model)];
    let count = |model: &str| scraped[&over_grpc("wharf_request_duration_seconds_count", model)];
    assert_eq!(count("pair"), 22.0);
    assert_eq!(count("add_sub"), 42.0, "two steps of 21 full requests");
    // add_sub's two steps run one after the other within each request.
    assert!(took("add_sub") <= took("pair"), "{scraped:?}");
    assert!(took("identity") <= took("pair"));
    let ok = r#"wharf_requests_total{model="pair",version="1",protocol="grpc",outcome="success"}"#;
    assert_eq!(scraped[ok], 22.0);
    // ModelStatistics answers for the ensemble itself: its own requests and rows.
    let stats = t
        .client
        .model_statistics(pb::ModelStatisticsRequest {
            name: "pair".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let pair = &stats.model_stats[0];
    assert_eq!(
        pair.inference_count, 22,
        "rows of the 22 requests (1 each: no batch dim)"
    );
    let success = pair
        .inference_stats
        .as_ref()
        .unwrap()
        .success
        .as_ref()
        .unwrap();
    assert_eq!(success.count, 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_step_is_named_with_its_models_error_and_code() {
    let (mut t, _dir) = ensemble_server().await;
    let status = t
        .client
        .model_infer(raw_request("mismatch", "x", &[2, 5], &[0.0; 10]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with(
            "ensemble 'mismatch' step 0 (model 'add_sub'): input 'INPUT0' has shape [2, 5] \
             but model 'add_sub' expects [-1, 4]"
        ),
        "{}",
        status.message()
    );
    // The ensemble's own input check comes first, naming the ensemble.
    let status = t
        .client
        .model_infer(raw_request("fan", "x", &[2, 3], &[0.0; 6]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("model 'fan' expects [-1, 4]"),
        "{}",
        status.message()
    );
    let invalid =
        r#"wharf_requests_total{model="mismatch",version="1",protocol="grpc",outcome="invalid"}"#;
    assert_eq!(metric(&t.server, invalid).await, 1.0);
    // The step model serves on.
    t.client
        .model_infer(raw_request("mismatch", "x", &[1, 4], &[1.0; 4]))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_who_leaves_mid_pipeline_cancels_the_steps_not_yet_run() {
    let (t, _dir) = ensemble_server().await;
    let mut client = t.client.clone();
    let leaving = tokio::spawn(async move {
        let request = raw_request("slow_chain", "x", &[1024, 1024], &vec![0.001; 1 << 20]);
        client.model_infer(request).await
    });
    wait_until_slow_is_busy(&t.server).await;
    leaving.abort();
    let cancelled = series("wharf_ensemble_steps_cancelled_total", "slow_chain");
    until(
        Duration::from_secs(20),
        "the ensemble counts the step it never started",
        async || metric(&t.server, &cancelled).await >= 1.0,
    )
    .await;
    let outcome = r#"wharf_requests_total{model="slow_chain",version="1",protocol="grpc",outcome="cancelled"}"#;
    assert_eq!(metric(&t.server, outcome).await, 1.0);
    wait_until_slow_is_idle(&t.server).await;
    assert_eq!(
        metric(&t.server, &series("wharf_executions_total", "identity")).await,
        0.0,
        "the second step never ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytes_held_between_steps_are_bounded_per_request() {
    let (mut t, _dir) = ensemble_server().await;
    // 20 rows: the input (320 B), then two copies (640 B) fit in 1 KiB.
    let response = t
        .client
        .model_infer(raw_request("bounded", "x", &[20, 4], &rows(20)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(output(&response, "b"), rows(20));
    // 40 rows: the input fits (640 B), the first copy with it does not.
    let status = t
        .client
        .model_infer(raw_request("bounded", "x", &[40, 4], &rows(40)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("ensemble 'bounded': step")
            && status
                .message()
                .contains("over the request's 1.0 KiB (max_intermediate_bytes)"),
        "{}",
        status.message()
    );
    // 70 rows: the input alone is over.
    let status = t
        .client
        .model_infer(raw_request("bounded", "x", &[70, 4], &rows(70)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("its inputs would hold"),
        "{}",
        status.message()
    );
    // Nothing else is affected: the same step model serves another ensemble.
    t.client
        .model_infer(raw_request("fan", "x", &[40, 4], &rows(40)))
        .await
        .unwrap();
    let full =
        r#"wharf_requests_total{model="bounded",version="1",protocol="grpc",outcome="queue_full"}"#;
    assert_eq!(metric(&t.server, full).await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ensembles_whose_steps_do_not_fit_are_unavailable_and_say_why() {
    let models = test_models();
    let dir = repository(&[
        ("identity", models.join("identity_fp32/1/model.onnx"), ""),
        (
            "broken",
            models.join("identity_fp32/1/model.onnx"),
            "max_batch_size: -3\n",
        ),
    ]);
    let step = |model: &str, inputs: &str, outputs: &str| {
        format!(
            "platform: ensemble
input: [{{ name: x, data_type: TYPE_FP32, dims: [-1, 4] }}]
output: [{{ name: y, data_type: TYPE_FP32, dims: [-1, 4] }}]
ensemble_scheduling:
  step:
    - {{ model_name: {model}, input_map: {inputs}, output_map: {outputs} }}
"
        )
    };
    let missing = step("nope", "{ INPUT0: x }", "{ OUTPUT0: y }");
    let unready = step("broken", "{ INPUT0: x }", "{ OUTPUT0: y }");
    let no_writer = step("identity", "{ INPUT0: ghost }", "{ OUTPUT0: y }");
    let wrong_input = step("identity", "{ WRONG: x }", "{ OUTPUT0: y }");
    let unwritten = step("identity", "{ INPUT0: x }", "{ OUTPUT0: other }");
    let cycle = "platform: ensemble
input: [{ name: x, data_type: TYPE_FP32, dims: [-1, 4] }]
output: [{ name: q, data_type: TYPE_FP32, dims: [-1, 4] }]
ensemble_scheduling:
  step:
    - { model_name: identity, input_map: { INPUT0: p }, output_map: { OUTPUT0: q } }
    - { model_name: identity, input_map: { INPUT0: q }, output_map: { OUTPUT0: p } }
";
    let of_each_other = |other: &str| {
        format!(
            "platform: ensemble
input: [{{ name: x, data_type: TYPE_FP32, dims: [-1, 4] }}]
output: [{{ name: y, data_type: TYPE_FP32, dims: [-1, 4] }}]
ensemble_scheduling:
  step:
    - {{ model_name: {other}, input_map: {{ x: x }}, output_map: {{ y: y }} }}
"
        )
    };
    let (e1, e2) = (of_each_other("loop_b"), of_each_other("loop_a"));
    let no_steps = "platform: ensemble\ninput: [{ name: x, data_type: TYPE_FP32, dims: [4] }]\n\
                    output: [{ name: y, data_type: TYPE_FP32, dims: [4] }]\n";
    let nested = step("fine", "{ x: x }", "{ y: y }");
    let fine = step("identity", "{ INPUT0: x }", "{ OUTPUT0: y }");
    add_ensembles(
        dir.path(),
        &[
            ("missing", &missing),
            ("unready", &unready),
            ("no_writer", &no_writer),
            ("wrong_input", &wrong_input),
            ("unwritten", &unwritten),
            ("cycle", cycle),
            ("loop_a", &e1),
            ("loop_b", &e2),
            ("no_steps", no_steps),
            ("nested", &nested),
            ("fine", &fine),
        ],
    );
    let mut t = TestServer::start(ServerConfig::local(dir.path())).await;
    let index = t.index().await;
    let reason = |name: &str| {
        let row = index.iter().find(|r| r.name == name).unwrap();
        (row.state.clone(), row.reason.clone())
    };
    let expect = [
        ("missing", "step 0 (model 'nope'): Request for unknown model: 'nope' is not found"),
        ("unready", "step 0 (model 'broken'): model 'broken' is not ready: "),
        (
            "no_writer",
            "step 0 (model 'identity'): input 'INPUT0' reads tensor 'ghost', which no step writes",
        ),
        (
            "wrong_input",
            "step 0 (model 'identity'): input_map names 'WRONG', which is not an input of the model (its inputs: INPUT0)",
        ),
        ("unwritten", "output 'y' is written by no step (the steps write: other)"),
        (
            "cycle",
            "the steps form a cycle: step 0 (model 'identity'), step 1 (model 'identity')",
        ),
        ("loop_a", "ensembles loop_a, loop_b are steps of each other"),
        ("no_steps", "platform ensemble needs its steps"),
    ];
    for (name, want) in expect {
        let (state, why) = reason(name);
        assert_eq!(state, "UNAVAILABLE", "{name}");
        assert!(why.contains(want), "{name}: {why}");
    }
    assert_eq!(reason("fine").0, "READY");
    assert_eq!(
        reason("nested").0,
        "READY",
        "an ensemble of an ensemble loads after it"
    );
    let response = t
        .client
        .model_infer(raw_request("nested", "x", &[2, 4], &rows(2)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(output(&response, "y"), rows(2));
}
