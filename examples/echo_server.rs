//! The transport's floor: a bare tonic server of the KServe v2 service, built from wharf's
//! protos with wharf's HTTP/2 windows, whose ModelInfer answers each input back as an
//! output without looking at it. `benches/overhead.py` measures wharf against it.
//!
//!     cargo run --release --example echo_server -- 127.0.0.1:9001
//!
//! ModelMetadata describes Triton's `simple` (INT32 INPUT0/INPUT1 [-1, 16]) for any name,
//! so that `wharf bench` can build its requests; every other RPC is UNIMPLEMENTED.

use tonic::{transport::Server, Request, Response, Status};
use wharf::{
    app::{HTTP2_CONNECTION_WINDOW, HTTP2_STREAM_WINDOW},
    grpc::pb::{
        self,
        grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer},
        model_infer_response::InferOutputTensor,
        model_metadata_response::TensorMetadata,
    },
};

struct Echo;

type Answer<T> = Result<Response<T>, Status>;

fn unimplemented<T>() -> Answer<T> {
    Err(Status::unimplemented(
        "the echo server answers ModelInfer and ModelMetadata only",
    ))
}

#[tonic::async_trait]
impl GrpcInferenceService for Echo {
    async fn model_infer(
        &self,
        r: Request<pb::ModelInferRequest>,
    ) -> Answer<pb::ModelInferResponse> {
        let r = r.into_inner();
        let outputs = r
            .inputs
            .iter()
            .enumerate()
            .map(|(i, input)| InferOutputTensor {
                name: format!("OUTPUT{i}"),
                datatype: input.datatype.clone(),
                shape: input.shape.clone(),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pb::ModelInferResponse {
            model_name: r.model_name,
            model_version: "1".into(),
            id: r.id,
            outputs,
            raw_output_contents: r.raw_input_contents,
            ..Default::default()
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<pb::ModelMetadataRequest>,
    ) -> Answer<pb::ModelMetadataResponse> {
        let tensor = |name: &str| TensorMetadata {
            name: name.into(),
            datatype: "INT32".into(),
            shape: vec![-1, 16],
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: r.into_inner().name,
            versions: vec!["1".into()],
            platform: "echo".into(),
            inputs: vec![tensor("INPUT0"), tensor("INPUT1")],
            outputs: vec![tensor("OUTPUT0"), tensor("OUTPUT1")],
        }))
    }

    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Answer<pb::ServerLiveResponse> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Answer<pb::ServerReadyResponse> {
        Ok(Response::new(pb::ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        _: Request<pb::ModelReadyRequest>,
    ) -> Answer<pb::ModelReadyResponse> {
        Ok(Response::new(pb::ModelReadyResponse { ready: true }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Answer<pb::ServerMetadataResponse> {
        unimplemented()
    }

    type ModelStreamInferStream =
        futures::stream::Empty<Result<pb::ModelStreamInferResponse, Status>>;

    async fn model_stream_infer(
        &self,
        _: Request<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Answer<Self::ModelStreamInferStream> {
        unimplemented()
    }

    async fn model_config(
        &self,
        _: Request<pb::ModelConfigRequest>,
    ) -> Answer<pb::ModelConfigResponse> {
        unimplemented()
    }

    async fn model_statistics(
        &self,
        _: Request<pb::ModelStatisticsRequest>,
    ) -> Answer<pb::ModelStatisticsResponse> {
        unimplemented()
    }

    async fn repository_index(
        &self,
        _: Request<pb::RepositoryIndexRequest>,
    ) -> Answer<pb::RepositoryIndexResponse> {
        unimplemented()
    }

    async fn repository_model_load(
        &self,
        _: Request<pb::RepositoryModelLoadRequest>,
    ) -> Answer<pb::RepositoryModelLoadResponse> {
        unimplemented()
    }

    async fn repository_model_unload(
        &self,
        _: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Answer<pb::RepositoryModelUnloadResponse> {
        unimplemented()
    }

    async fn system_shared_memory_status(
        &self,
        _: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Answer<pb::SystemSharedMemoryStatusResponse> {
        unimplemented()
    }

    async fn system_shared_memory_register(
        &self,
        _: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Answer<pb::SystemSharedMemoryRegisterResponse> {
        unimplemented()
    }

    async fn system_shared_memory_unregister(
        &self,
        _: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Answer<pb::SystemSharedMemoryUnregisterResponse> {
        unimplemented()
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Answer<pb::CudaSharedMemoryStatusResponse> {
        unimplemented()
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Answer<pb::CudaSharedMemoryRegisterResponse> {
        unimplemented()
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Answer<pb::CudaSharedMemoryUnregisterResponse> {
        unimplemented()
    }

    async fn trace_setting(
        &self,
        _: Request<pb::TraceSettingRequest>,
    ) -> Answer<pb::TraceSettingResponse> {
        unimplemented()
    }

    async fn log_settings(
        &self,
        _: Request<pb::LogSettingsRequest>,
    ) -> Answer<pb::LogSettingsResponse> {
        unimplemented()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into())
        .parse()?;
    println!("echo server on {addr}");
    Server::builder()
        .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW))
        .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW))
        .add_service(GrpcInferenceServiceServer::new(Echo).max_decoding_message_size(usize::MAX))
        .serve(addr)
        .await?;
    Ok(())
}
