//! Every implemented RPC against the real server on a loopback port.

use crate::common::*;
use tokio_stream::StreamExt;
use tonic::Code;
use wharf::grpc::pb::{self, InferParameter, InferTensorContents, ModelInferRequest};

#[tokio::test]
async fn server_and_model_status() {
    let mut t = TestServer::default().await;
    let c = &mut t.client;
    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = c
        .server_metadata(pb::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "wharf");
    assert_eq!(meta.version, env!("CARGO_PKG_VERSION"));
    let ready = |name: &str, version: &str| pb::ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        c.model_ready(ready("add_sub", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        c.model_ready(ready("add_sub", "1"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(ready("add_sub", "2"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(ready("nope", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn model_metadata_and_config() {
    let mut t = TestServer::default().await;
    let meta = t
        .client
        .model_metadata(pb::ModelMetadataRequest {
            name: "add_sub".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "add_sub");
    assert_eq!(meta.versions, vec!["1"]);
    assert_eq!(meta.platform, "tract_onnx");
    let names: Vec<_> = meta
        .inputs
        .iter()
        .map(|i| (i.name.as_str(), i.datatype.as_str(), i.shape.clone()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("INPUT0", "FP32", vec![-1, 4]),
            ("INPUT1", "FP32", vec![-1, 4])
        ]
    );
    assert_eq!(meta.outputs.len(), 2);

    let config = t
        .client
        .model_config(pb::ModelConfigRequest {
            name: "add_sub".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(config.name, "add_sub");
    assert_eq!(config.backend, "tract");
    assert_eq!(config.max_batch_size, 8);
    assert_eq!(config.input[0].dims, vec![4]);
    assert_eq!(config.input[0].data_type, pb::DataType::TypeFp32 as i32);
    assert_eq!(config.instance_group[0].count, 1);
    // A model with no config.yaml still has a complete config, read from its graph.
    let identity = t.model_config("identity_bytes").await;
    assert_eq!(identity.input[0].data_type, pb::DataType::TypeString as i32);
    assert_eq!(identity.input[0].dims, vec![-1]);
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn infer_raw_filters_outputs_and_echoes_id() {
    let mut t = TestServer::default().await;
    let response = t
        .client
        .model_infer(add_sub_request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.id, "req-1");
    assert_eq!(response.model_name, "add_sub");
    assert_eq!(response.model_version, "1");
    assert_eq!(response.outputs.len(), 2);
    assert_eq!(response.outputs[0].name, "OUTPUT0");
    assert_eq!(response.outputs[0].shape, vec![1, 4]);
    assert_eq!(
        f32s(&response.raw_output_contents[0]),
        vec![1.5, 2.5, 3.5, 4.5]
    );
    assert_eq!(
        f32s(&response.raw_output_contents[1]),
        vec![0.5, 1.5, 2.5, 3.5]
    );

    let mut only_sub = add_sub_request();
    only_sub.outputs = vec![requested("OUTPUT1")];
    let response = t.client.model_infer(only_sub).await.unwrap().into_inner();
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(response.outputs[0].name, "OUTPUT1");
    assert_eq!(
        f32s(&response.raw_output_contents[0]),
        vec![0.5, 1.5, 2.5, 3.5]
    );
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn typed_requests_are_answered_raw_as_triton_answers() {
    let mut t = TestServer::default().await;
    let contents = InferTensorContents {
        fp32_contents: vec![1.0, -2.0, 3.5],
        ..Default::default()
    };
    let request = ModelInferRequest {
        model_name: "identity_fp32".into(),
        inputs: vec![typed("INPUT0", "FP32", &[1, 3], contents.clone())],
        ..Default::default()
    };
    let response = t
        .client
        .model_infer(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f32s(&response.raw_output_contents[0]), vec![1.0, -2.0, 3.5]);
    assert!(response.outputs[0].contents.is_none());

    let mut binary = request;
    let mut out = requested("OUTPUT0");
    out.parameters.insert(
        "binary_data".into(),
        InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::BoolParam(true)),
        },
    );
    binary.outputs = vec![out];
    let response = t.client.model_infer(binary).await.unwrap().into_inner();
    assert_eq!(f32s(&response.raw_output_contents[0]), vec![1.0, -2.0, 3.5]);
    assert!(response.outputs[0].contents.is_none());
    t.server.shutdown().await.unwrap();
}

/// (datatype, raw bytes of 2 elements, typed contents of the same values where it has them)
fn datatype_cases() -> Vec<(&'static str, Vec<u8>, Option<InferTensorContents>)> {
    let c = |f: fn(&mut InferTensorContents)| {
        let mut c = InferTensorContents::default();
        f(&mut c);
        Some(c)
    };
    let le = |parts: &[&[u8]]| parts.concat();
    vec![
        (
            "BOOL",
            vec![1, 0],
            c(|c| c.bool_contents = vec![true, false]),
        ),
        ("UINT8", vec![7, 255], c(|c| c.uint_contents = vec![7, 255])),
        (
            "UINT16",
            le(&[&7u16.to_le_bytes(), &65535u16.to_le_bytes()]),
            c(|c| c.uint_contents = vec![7, 65535]),
        ),
        (
            "UINT32",
            le(&[&7u32.to_le_bytes(), &u32::MAX.to_le_bytes()]),
            c(|c| c.uint_contents = vec![7, u32::MAX]),
        ),
        (
            "UINT64",
            le(&[&7u64.to_le_bytes(), &u64::MAX.to_le_bytes()]),
            c(|c| c.uint64_contents = vec![7, u64::MAX]),
        ),
        (
            "INT8",
            vec![0x80, 0x7f],
            c(|c| c.int_contents = vec![-128, 127]),
        ),
        (
            "INT16",
            le(&[&(-300i16).to_le_bytes(), &300i16.to_le_bytes()]),
            c(|c| c.int_contents = vec![-300, 300]),
        ),
        (
            "INT32",
            le(&[&i32::MIN.to_le_bytes(), &5i32.to_le_bytes()]),
            c(|c| c.int_contents = vec![i32::MIN, 5]),
        ),
        (
            "INT64",
            le(&[&i64::MIN.to_le_bytes(), &5i64.to_le_bytes()]),
            c(|c| c.int64_contents = vec![i64::MIN, 5]),
        ),
        // FP16 travels raw only: 1.0 and -2.0.
        ("FP16", vec![0x00, 0x3c, 0x00, 0xc0], None),
        (
            "FP32",
            le(&[&1.5f32.to_le_bytes(), &(-2.0f32).to_le_bytes()]),
            c(|c| c.fp32_contents = vec![1.5, -2.0]),
        ),
        (
            "FP64",
            le(&[&1e300f64.to_le_bytes(), &(-2.0f64).to_le_bytes()]),
            c(|c| c.fp64_contents = vec![1e300, -2.0]),
        ),
        // BYTES: length-prefixed elements; tract's string type needs them to be UTF-8.
        (
            "BYTES",
            [
                &3u32.to_le_bytes()[..],
                "汉".as_bytes(),
                &2u32.to_le_bytes(),
                b"ok",
            ]
            .concat(),
            c(|c| c.bytes_contents = vec!["汉".into(), b"ok".to_vec()]),
        ),
    ]
}

#[tokio::test]
async fn every_datatype_round_trips_raw_and_typed_requests_are_answered_raw() {
    let mut t = TestServer::default().await;
    for (datatype, raw, contents) in datatype_cases() {
        let model = format!("identity_{}", datatype.to_lowercase());
        let request = ModelInferRequest {
            model_name: model.clone(),
            id: datatype.into(),
            inputs: vec![input("INPUT0", datatype, &[1, 2])],
            raw_input_contents: vec![raw.clone().into()],
            ..Default::default()
        };
        let response = t
            .client
            .model_infer(request)
            .await
            .unwrap_or_else(|e| panic!("{datatype} raw: {e}"))
            .into_inner();
        assert_eq!(response.outputs[0].datatype, datatype);
        assert_eq!(response.outputs[0].shape, vec![1, 2]);
        assert_eq!(
            response.raw_output_contents[0].as_ref(),
            raw.as_slice(),
            "{datatype} raw"
        );

        let Some(contents) = contents else { continue };
        let request = ModelInferRequest {
            model_name: model,
            inputs: vec![typed("INPUT0", datatype, &[1, 2], contents.clone())],
            ..Default::default()
        };
        let response = t
            .client
            .model_infer(request)
            .await
            .unwrap_or_else(|e| panic!("{datatype} typed: {e}"))
            .into_inner();
        // Answered raw, as Triton answers: the bytes of the same values sent raw.
        assert_eq!(
            response.raw_output_contents[0].as_ref(),
            raw.as_slice(),
            "{datatype} typed"
        );
        assert!(response.outputs[0].contents.is_none(), "{datatype} typed");
    }
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn streaming_answers_in_order_and_survives_bad_requests() {
    let mut t = TestServer::default().await;
    let mut bad = add_sub_request();
    bad.id = "bad".into();
    bad.inputs[1].name = "WRONG".into();
    let mut requests = Vec::new();
    for i in 0..20 {
        let mut r = if i == 7 {
            bad.clone()
        } else {
            add_sub_request()
        };
        if i != 7 {
            r.id = format!("s{i}");
        }
        requests.push(r);
    }
    let outbound = tokio_stream::iter(requests);
    let mut answers = t
        .client
        .model_stream_infer(outbound)
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(answer) = answers.next().await {
        let answer = answer.unwrap();
        let response = answer.infer_response.unwrap();
        if response.id == "bad" {
            assert!(
                answer.error_message.contains("no input named 'WRONG'"),
                "{}",
                answer.error_message
            );
        } else {
            assert_eq!(answer.error_message, "");
            assert_eq!(
                f32s(&response.raw_output_contents[0]),
                vec![1.5, 2.5, 3.5, 4.5]
            );
        }
        seen.push(response.id);
    }
    let expected: Vec<String> = (0..20)
        .map(|i| {
            if i == 7 {
                "bad".into()
            } else {
                format!("s{i}")
            }
        })
        .collect();
    assert_eq!(seen, expected);
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn repository_index_lists_every_model() {
    let mut t = TestServer::default().await;
    let index = t
        .client
        .repository_index(pb::RepositoryIndexRequest {
            repository_name: String::new(),
            ready: false,
        })
        .await
        .unwrap()
        .into_inner();
    let rows: Vec<_> = index
        .models
        .iter()
        .map(|m| (m.name.as_str(), m.version.as_str(), m.state.as_str()))
        .collect();
    assert!(rows.contains(&("add_sub", "1", "READY")));
    assert!(rows.contains(&("slow", "1", "READY")));
    assert_eq!(
        rows.len(),
        std::fs::read_dir(test_models())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count()
    );
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn unimplemented_and_disabled_rpcs_say_why() {
    let mut t = TestServer::default().await;
    let c = &mut t.client;
    // Model control is off by default (--model-control-mode none): loads are refused,
    // saying how to allow them.
    for status in [
        c.repository_model_load(pb::RepositoryModelLoadRequest::default())
            .await
            .unwrap_err(),
        c.repository_model_unload(pb::RepositoryModelUnloadRequest::default())
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status.message().contains("--model-control-mode none")
                && status.message().contains("if polling is enabled"),
            "{}",
            status.message()
        );
    }
    // Client shared memory is off by default: registering says how to allow it, and the
    // status lists nothing. No CUDA region can exist: none listed, none to clear.
    for status in [
        c.system_shared_memory_register(pb::SystemSharedMemoryRegisterRequest::default())
            .await
            .unwrap_err(),
        c.system_shared_memory_unregister(pb::SystemSharedMemoryUnregisterRequest::default())
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::Unimplemented);
        assert!(
            status.message().contains("--allow-client-shm=true"),
            "{}",
            status.message()
        );
    }
    let listed = c
        .system_shared_memory_status(pb::SystemSharedMemoryStatusRequest::default())
        .await
        .unwrap();
    assert!(listed.into_inner().regions.is_empty());
    let cuda = c
        .cuda_shared_memory_status(pb::CudaSharedMemoryStatusRequest::default())
        .await
        .unwrap();
    assert!(cuda.into_inner().regions.is_empty());
    c.cuda_shared_memory_unregister(pb::CudaSharedMemoryUnregisterRequest::default())
        .await
        .unwrap();
    let status = c
        .cuda_shared_memory_register(pb::CudaSharedMemoryRegisterRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(
        status.message().contains("is not implemented by wharf"),
        "{}",
        status.message()
    );
    // Trace settings answer with no exporter configured: the level is OFF.
    let settings = c
        .trace_setting(pb::TraceSettingRequest::default())
        .await
        .unwrap()
        .into_inner()
        .settings;
    assert_eq!(settings["trace_level"].value, ["OFF"]);
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let t = TestServer::default().await;
    let mut client = ServerReflectionClient::new(t.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(
        names.contains(&"inference.GRPCInferenceService"),
        "{names:?}"
    );
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    t.server.shutdown().await.unwrap();
}
