//! The API key (UNAUTHENTICATED without it, health and reflection open) and TLS, against
//! a real server on loopback.

use crate::common::*;
use tokio_stream::StreamExt;
use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig},
    Code, Request,
};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use wharf::{app::Server, auth::ApiKey, config::ServerConfig};

fn with_key(key: &str) -> Request<wharf::grpc::pb::ModelInferRequest> {
    let mut request = Request::new(add_sub_request());
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {key}")).unwrap(),
    );
    request
}

#[tokio::test]
async fn inference_wants_the_api_key_while_health_and_reflection_stay_open() {
    let mut config = ServerConfig::local(test_models());
    config.listen.api_key = Some(ApiKey::new("s3cret-key").unwrap());
    let t = TestServer::start(config).await;
    let mut client = t.client.clone();

    for (request, why) in [
        (Request::new(add_sub_request()), "missing"),
        (with_key("s3cret-kex"), "not valid"),
        (with_key("s3cret-key-and-more"), "not valid"),
    ] {
        let status = client.model_infer(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
        assert!(status.message().contains(why), "{}", status.message());
    }
    let answer = client.model_infer(with_key("s3cret-key")).await.unwrap();
    assert_eq!(answer.into_inner().id, "req-1");
    // Every inference RPC, not only ModelInfer.
    let status = client
        .server_ready(wharf::grpc::pb::ServerReadyRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Probes and tooling need no key.
    // Health follows the registry from a task of its own: SERVING shortly after loading.
    let mut health = HealthClient::new(t.channel.clone());
    until(
        std::time::Duration::from_secs(10),
        "health answers SERVING without a key",
        async || {
            let answer = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap();
            answer.into_inner().status == 1
        },
    )
    .await;
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, ServerReflectionRequest,
    };
    let mut answers = ServerReflectionClient::new(t.channel.clone())
        .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .unwrap()
        .into_inner();
    assert!(answers.next().await.unwrap().is_ok());
    t.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_certificate_and_only_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut config = ServerConfig::local(test_models());
    config.listen.tls_cert = Some(cert_path);
    config.listen.tls_key = Some(key_path);
    config.listen.api_key = Some(ApiKey::new("k").unwrap());
    let server = Server::start(config).await.unwrap();
    server.loaded().await;
    let port = server.grpc_addr().port();

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cert.cert.pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client =
        wharf::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel);
    let answer = client
        .model_infer(with_key("k"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.id, "req-1");
    let status = client
        .model_infer(Request::new(add_sub_request()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // A plaintext client gets no answer from a TLS port.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let mut client =
            wharf::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(plain);
        assert!(client.model_infer(with_key("k")).await.is_err());
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_missing_certificate_fails_the_start_naming_the_file() {
    let mut config = ServerConfig::local(test_models());
    config.listen.tls_cert = Some("/nonexistent/tls.crt".into());
    config.listen.tls_key = Some("/nonexistent/tls.key".into());
    let error = Server::start(config).await.err().expect("start fails");
    assert!(
        error
            .to_string()
            .contains("TLS certificate /nonexistent/tls.crt"),
        "{error}"
    );
}
