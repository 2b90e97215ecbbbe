//! Each bad request gets its gRPC code and a message naming what was wrong, and the server
//! keeps serving others.

use crate::common::*;
use tonic::Code;
use wharf::{
    config::ServerConfig,
    grpc::pb::{self, InferTensorContents, ModelInferRequest},
};

async fn expect(t: &mut TestServer, request: ModelInferRequest, code: Code, message: &str) {
    let status = t
        .client
        .model_infer(request)
        .await
        .expect_err("request must fail");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(
        status.message().contains(message),
        "expected {message:?} in {:?}",
        status.message()
    );
    // The server is still there for everyone else.
    let ok = t
        .client
        .model_infer(add_sub_request())
        .await
        .expect("good request after a bad one");
    assert_eq!(ok.into_inner().outputs.len(), 2);
}

#[tokio::test]
async fn unknown_models_and_versions_are_not_found() {
    let mut t = TestServer::default().await;
    let mut r = add_sub_request();
    r.model_name = "nope".into();
    expect(&mut t, r, Code::NotFound, "unknown model: 'nope'").await;
    let mut r = add_sub_request();
    r.model_version = "3".into();
    expect(
        &mut t,
        r,
        Code::NotFound,
        "model 'add_sub' has no version 3; it serves 1",
    )
    .await;
    let status = t
        .client
        .model_metadata(pb::ModelMetadataRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    t.server.shutdown().await.unwrap();
}

/// A change that spoils a good request.
type Mutation = dyn Fn(&mut ModelInferRequest);

#[tokio::test]
async fn inputs_that_do_not_fit_the_model_are_invalid() {
    let mut t = TestServer::default().await;
    let cases: Vec<(Box<Mutation>, &str)> = vec![
        (
            Box::new(|r| r.inputs[1].name = "INPUT9".into()),
            "model 'add_sub' has no input named 'INPUT9'; its inputs are: INPUT0, INPUT1",
        ),
        (
            Box::new(|r| {
                r.inputs.pop();
                r.raw_input_contents.pop();
            }),
            "missing input 'INPUT1' for model 'add_sub'",
        ),
        (
            Box::new(|r| {
                r.inputs.push(input("INPUT0", "FP32", &[1, 4]));
                r.raw_input_contents.push(fp32_bytes(&[0.0; 4]).into());
            }),
            "input 'INPUT0' is given more than once",
        ),
        (
            Box::new(|r| r.inputs[0].datatype = "INT32".into()),
            "input 'INPUT0' has datatype INT32 but model 'add_sub' expects FP32",
        ),
        (
            Box::new(|r| {
                r.inputs[0].shape = vec![1, 2, 2];
            }),
            "input 'INPUT0' has shape [1, 2, 2] but model 'add_sub' expects [-1, 4]",
        ),
        (
            Box::new(|r| {
                r.inputs[0].shape = vec![9, 4];
                r.inputs[1].shape = vec![9, 4];
                r.raw_input_contents =
                    vec![fp32_bytes(&[0.0; 36]).into(), fp32_bytes(&[0.0; 36]).into()];
            }),
            "input 'INPUT0' has batch size 9 but model 'add_sub' takes 1 to 8",
        ),
        (
            Box::new(|r| r.raw_input_contents[0].truncate(15)),
            "input 'INPUT0': raw_input_contents holds 15 bytes but shape [1, 4] of FP32 needs 16",
        ),
        (
            Box::new(|r| {
                r.inputs[0].contents = Some(InferTensorContents {
                    fp32_contents: vec![0.0; 4],
                    ..Default::default()
                })
            }),
            "input 'INPUT0' has typed contents but the request also carries raw_input_contents",
        ),
        (
            Box::new(|r| r.inputs[0].datatype = "FLOAT".into()),
            "input 'INPUT0': unknown datatype 'FLOAT'",
        ),
        (
            Box::new(|r| r.outputs = vec![requested("OUTPUT7")]),
            "model 'add_sub' has no output named 'OUTPUT7'",
        ),
    ];
    for (mutate, message) in cases {
        let mut r = add_sub_request();
        mutate(&mut r);
        expect(&mut t, r, Code::InvalidArgument, message).await;
    }
    // A shape the graph itself rejects, though its dims are open in the spec.
    let r = ModelInferRequest {
        model_name: "identity_bytes".into(),
        inputs: vec![input("INPUT0", "BYTES", &[1, 2])],
        raw_input_contents: vec![[&5u32.to_le_bytes()[..], b"ab"].concat().into()],
        ..Default::default()
    };
    expect(
        &mut t,
        r,
        Code::InvalidArgument,
        "input 'INPUT0': BYTES element 0 of 2: declares 5 bytes but only 2 remain",
    )
    .await;
    let r = ModelInferRequest {
        model_name: "identity_bytes".into(),
        inputs: vec![input("INPUT0", "BYTES", &[1, 1])],
        raw_input_contents: vec![[&2u32.to_le_bytes()[..], &[0xff, 0xfe]].concat().into()],
        ..Default::default()
    };
    expect(
        &mut t,
        r,
        Code::InvalidArgument,
        "takes BYTES as UTF-8 text only",
    )
    .await;
    let r = ModelInferRequest {
        model_name: "identity_fp16".into(),
        inputs: vec![typed(
            "INPUT0",
            "FP16",
            &[1, 1],
            InferTensorContents {
                fp32_contents: vec![1.0],
                ..Default::default()
            },
        )],
        ..Default::default()
    };
    expect(
        &mut t,
        r,
        Code::InvalidArgument,
        "FP16 has no typed contents field; send it in raw_input_contents",
    )
    .await;
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_requests_are_refused_by_name() {
    let mut config = ServerConfig::local(test_models());
    config.limits.max_request_size = bytesize::ByteSize::mib(1);
    let mut t = TestServer::start(config).await;
    let big = vec![0f32; (1 << 20) / 4 + 4];
    let r = ModelInferRequest {
        model_name: "identity_fp32".into(),
        inputs: vec![input("INPUT0", "FP32", &[1, big.len() as i64])],
        raw_input_contents: vec![fp32_bytes(&big).into()],
        ..Default::default()
    };
    expect(
        &mut t,
        r,
        Code::InvalidArgument,
        "input 'INPUT0': shape [1, 262148] of FP32 is larger than the limit of 1048576 bytes",
    )
    .await;
    // A shape whose element count overflows is refused before anything is allocated.
    let r = ModelInferRequest {
        model_name: "identity_fp32".into(),
        inputs: vec![input("INPUT0", "FP32", &[i64::MAX, i64::MAX])],
        raw_input_contents: vec![vec![0u8; 4].into()],
        ..Default::default()
    };
    expect(&mut t, r, Code::InvalidArgument, "larger than the limit").await;
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_model_that_failed_to_load_is_unavailable_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let copy = |name: &str| {
        let to = dir.path().join(name).join("1");
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(
            test_models().join("add_sub/1/model.onnx"),
            to.join("model.onnx"),
        )
        .unwrap();
    };
    copy("add_sub");
    copy("bad_config");
    std::fs::write(
        dir.path().join("bad_config/config.yaml"),
        "max_batch_size: 8\ninstance_group: [{count: two}]\n",
    )
    .unwrap();
    copy("bad_graph");
    std::fs::write(
        dir.path().join("bad_graph/1/model.onnx"),
        b"not an onnx file",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("no_versions")).unwrap();

    let mut t = TestServer::start(ServerConfig::local(dir.path())).await;
    // One broken model does not stop the others.
    t.client.model_infer(add_sub_request()).await.unwrap();
    let mut r = add_sub_request();
    r.model_name = "bad_config".into();
    let status = t.client.model_infer(r).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .contains("config.yaml: key `instance_group[0].count`"),
        "{}",
        status.message()
    );

    let index = t.index().await;
    let reason = |name: &str| {
        index
            .iter()
            .find(|m| m.name == name)
            .map(|m| (m.state.clone(), m.reason.clone()))
            .unwrap()
    };
    assert_eq!(reason("add_sub").0, "READY");
    let (state, why) = reason("bad_graph");
    assert_eq!(state, "UNAVAILABLE");
    assert!(why.contains("bad_graph/1/model.onnx"), "{why}");
    let (state, why) = reason("no_versions");
    assert_eq!(state, "UNAVAILABLE");
    assert!(why.contains("no version folder"), "{why}");
    // Strict readiness: the server is not ready while a model is broken.
    assert!(
        !t.client
            .server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_full_queue_is_resource_exhausted_at_once() {
    // One instance and room for one waiting request: of sixteen sent at once, some are
    // refused straight away and every admitted one is answered.
    let yaml = "max_batch_size: 0\ninstance_group: [{count: 1}]\ndynamic_batching: {default_queue_policy: {max_queue_size: 1}}\n";
    let dir = one_model_repository("slow", &test_models().join("slow/1/model.onnx"), yaml);
    let t = TestServer::start(ServerConfig::local(dir.path())).await;
    let request = raw_request("slow", "x", &[1024, 1024], &vec![0.01; 1024 * 1024]);
    // One running first; then the rest arrive at once, for one queue slot.
    let spawn = |request: pb::ModelInferRequest| {
        let mut client = t.client.clone();
        tokio::spawn(async move { client.model_infer(request).await })
    };
    let mut calls = vec![spawn(request.clone())];
    wait_until_slow_is_busy(&t.server).await;
    calls.extend((1..16).map(|_| spawn(request.clone())));
    let (mut ok, mut exhausted) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(
                    status.code(),
                    Code::ResourceExhausted,
                    "{}",
                    status.message()
                );
                assert!(
                    status
                        .message()
                        .contains("model 'slow' queue is full (1 waiting, its max_queue_size)"),
                    "{}",
                    status.message()
                );
                exhausted += 1;
            }
        }
    }
    assert!(exhausted >= 1 && ok >= 2, "ok {ok}, refused {exhausted}");
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_request_still_queued_past_its_timeout_is_deadline_exceeded() {
    let yaml = "max_batch_size: 0\ninstance_group: [{count: 1}]\n\
                dynamic_batching: {default_queue_policy: {allow_timeout_override: true}}\n";
    waits_past_its_timeout(yaml).await;
}

/// Without dynamic batching the next request waits in its instance's hand rather than in
/// the queue (BatchPolicy::batches_per_instance); its deadline holds there too.
#[tokio::test]
async fn a_request_waiting_behind_a_running_one_past_its_timeout_is_deadline_exceeded() {
    waits_past_its_timeout("max_batch_size: 0\ninstance_group: [{count: 1}]\n").await;
}

async fn waits_past_its_timeout(yaml: &str) {
    let dir = one_model_repository("slow", &test_models().join("slow/1/model.onnx"), yaml);
    let t = TestServer::start(ServerConfig::local(dir.path())).await;
    let request = raw_request("slow", "x", &[1024, 1024], &vec![0.01; 1024 * 1024]);
    let mut busy = t.client.clone();
    let first = request.clone();
    let running = tokio::spawn(async move { busy.model_infer(first).await });
    wait_until_slow_is_busy(&t.server).await;

    let mut hurried = request;
    hurried.parameters.insert(
        "timeout".into(),
        pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(1000)),
        },
    );
    let status = t.client.clone().model_infer(hurried).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .contains("model 'slow': the request waited"),
        "{}",
        status.message()
    );
    running.await.unwrap().unwrap();
    t.server.shutdown().await.unwrap();
}

/// One bad request of the catalogue: what it is, and the code and words it must get.
struct Bad {
    request: ModelInferRequest,
    code: Code,
    says: String,
}

fn bad(request: ModelInferRequest, code: Code, says: &str) -> Bad {
    Bad {
        request,
        code,
        says: says.into(),
    }
}

/// add_sub with one input changed.
fn add_sub_with(change: impl FnOnce(&mut ModelInferRequest)) -> ModelInferRequest {
    let mut r = add_sub_request();
    change(&mut r);
    r
}

fn one_input(model: &str, datatype: &str, shape: &[i64], raw: Vec<u8>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![input("INPUT0", datatype, shape)],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

fn param(kind: pb::infer_parameter::ParameterChoice) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(kind),
    }
}

/// The hostile-input catalogue: each case is refused with its code and a message naming
/// what was wrong, and a good request is served right after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bad_input_catalogue() {
    use pb::infer_parameter::ParameterChoice::{BoolParam, Int64Param, StringParam};
    let mut config = ServerConfig::local(test_models());
    config.limits.max_request_size = bytesize::ByteSize::mib(1);
    config.limits.max_inflight_bytes = bytesize::ByteSize::mib(4);
    let mut t = TestServer::start(config).await;
    let four = fp32_bytes(&[1.0; 4]);
    let cases = vec![
        bad(add_sub_with(|r| r.model_name = "nope".into()), Code::NotFound, "unknown model: 'nope'"),
        bad(add_sub_with(|r| r.model_name = String::new()), Code::NotFound, "unknown model: ''"),
        bad(add_sub_with(|r| r.model_name = "m".repeat(1 << 20)), Code::NotFound, "unknown model: 'mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm"),
        bad(add_sub_with(|r| r.model_name = "../add_sub".into()), Code::NotFound, "unknown model: '../add_sub'"),
        bad(add_sub_with(|r| r.model_version = "9".into()), Code::NotFound, "model 'add_sub' has no version 9; it serves 1"),
        // Triton's words, which its grpc_explicit_int8_content_client example matches.
        bad(add_sub_with(|r| r.model_version = "one".into()), Code::InvalidArgument, "failed to get model version from specified version string 'one'"),
        bad(add_sub_with(|r| r.model_version = "-1".into()), Code::InvalidArgument, "failed to get model version from specified version string '-1'"),
        bad(add_sub_with(|r| { r.inputs.clear(); r.raw_input_contents.clear(); }), Code::InvalidArgument, "missing input 'INPUT0' for model 'add_sub' (expects: INPUT0, INPUT1)"),
        bad(add_sub_with(|r| { r.inputs.pop(); r.raw_input_contents.pop(); }), Code::InvalidArgument, "missing input 'INPUT1' for model 'add_sub' (expects: INPUT0, INPUT1)"),
        bad(add_sub_with(|r| { r.inputs.push(input("EXTRA", "FP32", &[1, 4])); r.raw_input_contents.push(four.clone().into()); }), Code::InvalidArgument, "model 'add_sub' has no input named 'EXTRA'; its inputs are: INPUT0, INPUT1"),
        bad(add_sub_with(|r| { r.inputs[1].name = "INPUT0".into(); }), Code::InvalidArgument, "input 'INPUT0' is given more than once"),
        bad(add_sub_with(|r| r.inputs[0].datatype = "FP64".into()), Code::InvalidArgument, "input 'INPUT0': raw_input_contents holds 16 bytes but shape [1, 4] of FP64 needs 32"),
        bad(add_sub_with(|r| r.inputs[0].datatype = "FLOAT".into()), Code::InvalidArgument, "input 'INPUT0': unknown datatype 'FLOAT'; expected one of BOOL, UINT8, UINT16, UINT32, UIN"),
        bad(add_sub_with(|r| r.inputs[0].datatype = "fp32".into()), Code::InvalidArgument, "input 'INPUT0': unknown datatype 'fp32'; expected one of BOOL, UINT8, UINT16, UINT32, UINT"),
        bad(add_sub_with(|r| r.inputs[0].datatype = String::new()), Code::InvalidArgument, "input 'INPUT0': unknown datatype ''; expected one of BOOL, UINT8, UINT16, UINT32, UINT64, "),
        bad(add_sub_with(|r| r.inputs[0].shape = vec![1, 5]), Code::InvalidArgument, "input 'INPUT0': raw_input_contents holds 16 bytes but shape [1, 5] of FP32 needs 20"),
        bad(add_sub_with(|r| r.inputs[0].shape = vec![4]), Code::InvalidArgument, "input 'INPUT0' has shape [4] but model 'add_sub' expects [-1, 4] (-1: any size; the first "),
        bad(add_sub_with(|r| r.inputs[0].shape = vec![1, 1, 4]), Code::InvalidArgument, "input 'INPUT0' has shape [1, 1, 4] but model 'add_sub' expects [-1, 4] (-1: any size; the "),
        bad(add_sub_with(|r| r.inputs[0].shape = vec![-1, 4]), Code::InvalidArgument, "input 'INPUT0': shape [-1, 4] has a negative dimension"),
        bad(add_sub_with(|r| r.inputs[0].shape = vec![i64::MAX, 4]), Code::InvalidArgument, "input 'INPUT0': shape [9223372036854775807, 4] of FP32 is larger than the limit of 1048576"),
        bad(add_sub_with(|r| r.inputs[0].shape = vec![1 << 40, 1 << 40]), Code::InvalidArgument, "input 'INPUT0': shape [1099511627776, 1099511627776] of FP32 is larger than the limit of 1"),
        bad(add_sub_with(|r| r.inputs[0].shape = vec![1; 64]), Code::InvalidArgument, "input 'INPUT0': raw_input_contents holds 16 bytes but shape "),
        bad(add_sub_with(|r| r.inputs[0].shape = Vec::new()), Code::InvalidArgument, "input 'INPUT0': raw_input_contents holds 16 bytes but shape [] of FP32 needs 4"),
        bad(add_sub_with(|r| r.raw_input_contents[0] = fp32_bytes(&[1.0; 3]).into()), Code::InvalidArgument, "input 'INPUT0': raw_input_contents holds 12 bytes but shape [1, 4] of FP32 needs 16"),
        bad(add_sub_with(|r| r.raw_input_contents[0] = vec![0u8; 17].into()), Code::InvalidArgument, "input 'INPUT0': raw_input_contents holds 17 bytes but shape [1, 4] of FP32 needs 16"),
        bad(add_sub_with(|r| { r.raw_input_contents.pop(); }), Code::InvalidArgument, "raw_input_contents has 1 entries but the request has 2 inputs not in shared memory; expected one per input"),
        bad(add_sub_with(|r| r.raw_input_contents.push(four.clone().into())), Code::InvalidArgument, "raw_input_contents has 3 entries but the request has 2 inputs not in shared memory; expected one per input"),
        bad(add_sub_with(|r| r.inputs[0].contents = Some(InferTensorContents { fp32_contents: vec![1.0; 4], ..Default::default() })), Code::InvalidArgument, "input 'INPUT0' has typed contents but the request also carries raw_input_contents; send al"),
        bad(
            ModelInferRequest {
                model_name: "add_sub".into(),
                inputs: vec![
                    typed("INPUT0", "FP32", &[1, 4], InferTensorContents { int_contents: vec![1; 4], ..Default::default() }),
                    typed("INPUT1", "FP32", &[1, 4], InferTensorContents { fp32_contents: vec![1.0; 4], ..Default::default() }),
                ],
                ..Default::default()
            },
            Code::InvalidArgument,
            "input 'INPUT0': FP32 values belong in fp32_contents, but int_contents is set",
        ),
        bad(
            ModelInferRequest {
                model_name: "add_sub".into(),
                inputs: vec![
                    typed("INPUT0", "FP32", &[1, 4], InferTensorContents { fp32_contents: vec![1.0; 3], ..Default::default() }),
                    typed("INPUT1", "FP32", &[1, 4], InferTensorContents { fp32_contents: vec![1.0; 4], ..Default::default() }),
                ],
                ..Default::default()
            },
            Code::InvalidArgument,
            "input 'INPUT0': fp32_contents holds 3 values but shape [1, 4] needs 4",
        ),
        bad(
            ModelInferRequest {
                model_name: "add_sub".into(),
                inputs: vec![input("INPUT0", "FP32", &[1, 4]), input("INPUT1", "FP32", &[1, 4])],
                ..Default::default()
            },
            Code::InvalidArgument,
            "input 'INPUT0': has no data: set its contents or raw_input_contents",
        ),
        bad(add_sub_with(|r| { for i in &mut r.inputs { i.shape = vec![9, 4]; } r.raw_input_contents = vec![fp32_bytes(&[1.0; 36]).into(), fp32_bytes(&[1.0; 36]).into()]; }), Code::InvalidArgument, "input 'INPUT0' has batch size 9 but model 'add_sub' takes 1 to 8 (max_batch_size)"),
        bad(add_sub_with(|r| { for i in &mut r.inputs { i.shape = vec![2, 4]; } r.raw_input_contents[1] = fp32_bytes(&[1.0; 8]).into(); r.raw_input_contents[0] = fp32_bytes(&[1.0; 8]).into(); r.inputs[1].shape = vec![1, 4]; r.raw_input_contents[1] = four.clone().into(); }), Code::InvalidArgument, "input 'INPUT1' has batch size 1 but input 'INPUT0' has 2; all inputs must agree"),
        bad(add_sub_with(|r| r.outputs.push(requested("NOPE"))), Code::InvalidArgument, "model 'add_sub' has no output named 'NOPE'; its outputs are: OUTPUT0, OUTPUT1"),
        bad(add_sub_with(|r| { r.parameters.insert("priority".into(), param(StringParam("high".into()))); }), Code::InvalidArgument, "parameter 'priority' must be a non-negative integer, found StringParam(\"high\")"),
        bad(add_sub_with(|r| { r.parameters.insert("priority".into(), param(Int64Param(-1))); }), Code::InvalidArgument, "parameter 'priority' must be a non-negative integer, found Int64Param(-1)"),
        bad(add_sub_with(|r| { r.parameters.insert("timeout".into(), param(BoolParam(true))); }), Code::InvalidArgument, "parameter 'timeout' must be a non-negative integer, found BoolParam(true)"),
        bad(add_sub_with(|r| { r.parameters.insert("timeout".into(), param(Int64Param(-5))); }), Code::InvalidArgument, "parameter 'timeout' must be a non-negative integer, found Int64Param(-5)"),
        bad(add_sub_with(|r| { r.raw_input_contents[0] = vec![0u8; 2 << 20].into(); r.inputs[0].shape = vec![1, 1 << 19]; }), Code::InvalidArgument, "input 'INPUT0': shape [1, 524288] of FP32 is larger than the limit of 1048576 bytes per re"),
        bad(one_input("identity_bytes", "BYTES", &[1, 1], vec![5, 0, 0, 0, b'a']), Code::InvalidArgument, "input 'INPUT0': BYTES element 0 of 1: declares 5 bytes but only 1 remain"),
        bad(one_input("identity_bytes", "BYTES", &[1, 1], vec![1, 0]), Code::InvalidArgument, "input 'INPUT0': BYTES element 0 of 1: length prefix runs past the end of the data (2 bytes"),
        bad(one_input("identity_bytes", "BYTES", &[1, 2], vec![1, 0, 0, 0, b'a']), Code::InvalidArgument, "input 'INPUT0': BYTES element 1 of 2: length prefix runs past the end of the data (5 bytes"),
        bad(one_input("identity_bytes", "BYTES", &[1, 1], vec![1, 0, 0, 0, b'a', 9]), Code::InvalidArgument, "input 'INPUT0': BYTES data holds 1 bytes after the 1 elements that the shape calls for"),
        bad(one_input("identity_bool", "BOOL", &[1, 2], vec![1, 2]), Code::InvalidArgument, "input 'INPUT0': BOOL element 1 is byte 2, expected 0 or 1"),
        bad(one_input("identity_int32", "INT32", &[1, 1], vec![1, 2, 3]), Code::InvalidArgument, "input 'INPUT0': raw_input_contents holds 3 bytes but shape [1, 1] of INT32 needs 4"),
        bad(one_input("identity_fp16", "FP16", &[1, 1], vec![1]), Code::InvalidArgument, "input 'INPUT0': raw_input_contents holds 1 bytes but shape [1, 1] of FP16 needs 2"),
        bad(one_input("identity_uint8", "UINT8", &[1, 2], vec![1, 2, 3]), Code::InvalidArgument, "input 'INPUT0': raw_input_contents holds 3 bytes but shape [1, 2] of UINT8 needs 2"),
        bad(one_input("identity_fp32", "BF16", &[1, 1], vec![0, 0]), Code::InvalidArgument, "input 'INPUT0' has datatype BF16 but model 'identity_fp32' expects FP32"),
    ];
    let count = cases.len();
    assert!(count >= 40, "the catalogue holds {count} cases");
    let mut wrong = Vec::new();
    for (i, case) in cases.into_iter().enumerate() {
        let status = t
            .client
            .model_infer(case.request)
            .await
            .expect_err("a bad request fails");
        let message = status.message();
        if status.code() != case.code || !message.contains(&case.says) {
            wrong.push(format!(
                "case {i}: expected {:?} saying {:?}, got {:?}: {}",
                case.code,
                case.says,
                status.code(),
                wharf::error::clip(message, 300)
            ));
        }
        assert!(
            message.len() <= wharf::error::MAX_MESSAGE_BYTES,
            "case {i}: clipped"
        );
        let ok = t.client.model_infer(add_sub_request()).await;
        assert!(ok.is_ok(), "case {i}: a good request after it: {ok:?}");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    println!("bad-input catalogue: {count} cases, each refused as expected");
    t.server.shutdown().await.unwrap();
}
