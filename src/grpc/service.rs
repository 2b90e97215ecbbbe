//! `inference.GRPCInferenceService`: each handler converts, hands off to the core or the
//! repository, and converts back. No policy lives here.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::{stream::FuturesOrdered, FutureExt, Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{
    convert::{decode_request, encode_response},
    extensions,
    gate::Charge,
    messages,
    pb::{self, grpc_inference_service_server::GrpcInferenceService},
};
use crate::{
    admission::ByteBudget,
    control::ModelControl,
    error::InferError,
    inference::Inference,
    metrics::{Protocol, Refusal},
    repository::{ServedModel, Status as VersionStatus},
    shared_memory::{SharedMemory, ShmError},
    trace::TraceCx,
};

/// Requests of one stream computed at once; past it the stream stops reading until an
/// answer goes out, so one client cannot queue without bound through a single stream.
const STREAM_IN_FLIGHT: usize = 64;
/// Answers buffered for a slow stream reader before workers' results wait on it.
const STREAM_OUT_BUFFER: usize = 16;

#[derive(Clone)]
pub struct InferenceService {
    inference: Arc<Inference>,
    max_request_bytes: usize,
    strict_readiness: bool,
    /// Stream messages are held against it one by one (unary bodies by `gate`).
    budget: Arc<ByteBudget>,
    control: Arc<ModelControl>,
    /// Client regions registered over either front end.
    shared_memory: Arc<SharedMemory>,
}

impl InferenceService {
    pub fn new(
        inference: Arc<Inference>,
        max_request_bytes: usize,
        strict_readiness: bool,
        budget: Arc<ByteBudget>,
        control: Arc<ModelControl>,
        shared_memory: Arc<SharedMemory>,
    ) -> Self {
        InferenceService {
            inference,
            max_request_bytes,
            strict_readiness,
            budget,
            control,
            shared_memory,
        }
    }

    /// Triton's extensions wharf serves, as ServerMetadata and `GET /v2` list them.
    pub fn extensions(&self) -> Vec<&'static str> {
        let mut all = extensions::EXTENSIONS.to_vec();
        if self.shared_memory.allowed() {
            let at = all
                .iter()
                .position(|e| *e == "binary_tensor_data")
                .unwrap_or(0);
            all.insert(at, "system_shared_memory");
        }
        all
    }

    /// The registered client regions, for the HTTP front end.
    pub fn shared_memory(&self) -> &SharedMemory {
        &self.shared_memory
    }

    /// The serving core, for the HTTP front end's inference calls.
    pub fn inference(&self) -> &Arc<Inference> {
        &self.inference
    }

    /// Tensor bytes one request may carry.
    pub fn max_request_bytes(&self) -> usize {
        self.max_request_bytes
    }

    pub(super) async fn infer(
        &self,
        request: pb::ModelInferRequest,
        deadline: Option<Duration>,
        trace: Option<TraceCx>,
    ) -> Result<pb::ModelInferResponse, InferError> {
        let (mut request, windows) =
            decode_request(request, self.max_request_bytes, &self.shared_memory)?;
        request.deadline = deadline;
        request.trace = trace;
        let response = self.inference.infer(request).await?;
        encode_response(response, &windows)
    }

    async fn stream_answer(
        &self,
        request: pb::ModelInferRequest,
        metadata: Option<&tonic::metadata::MetadataMap>,
    ) -> pb::ModelStreamInferResponse {
        // Kept for the error answer, so the client can tell which request failed.
        let echo = pb::ModelInferResponse {
            model_name: request.model_name.clone(),
            model_version: request.model_version.clone(),
            id: request.id.clone(),
            ..Default::default()
        };
        let answer = match self.budget.try_hold(request.encoded_len()) {
            Ok(_held) => self.infer_in_stream(request, metadata).await,
            Err(refused) => {
                self.inference
                    .repository()
                    .metrics()
                    .refused(Protocol::Grpc, Refusal::InflightBytes);
                drop(request);
                Err(refused.into())
            }
        };
        match answer {
            Ok(response) => pb::ModelStreamInferResponse {
                error_message: String::new(),
                infer_response: Some(response),
            },
            Err(e) => pb::ModelStreamInferResponse {
                error_message: e.message(),
                infer_response: Some(echo),
            },
        }
    }

    fn ready_model(&self, name: &str, version: &str) -> Result<Arc<ServedModel>, Status> {
        Ok(self
            .inference
            .repository()
            .registry()
            .lookup(name, version)?)
    }
}

/// The caller's deadline, from the `grpc-timeout` header (digits and a unit: H, M, S, m,
/// u or n); None when absent or malformed.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

type AnswerStream =
    Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = self.inference.server_ready(self.strict_readiness);
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        r: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = r.into_inner();
        let ready = !self.inference.is_draining()
            && self
                .inference
                .repository()
                .registry()
                .is_ready(&r.name, &r.version);
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "wharf".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: self.extensions().into_iter().map(String::from).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = r.into_inner();
        let model = self.ready_model(&r.name, &r.version)?;
        let versions = self
            .inference
            .repository()
            .registry()
            .entry(&r.name)
            .map(|e| e.versions.keys().map(u64::to_string).collect())
            .unwrap_or_default();
        Ok(Response::new(messages::metadata(&model, versions)))
    }

    async fn model_infer(
        &self,
        r: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let deadline = grpc_timeout(r.metadata());
        // The body's bytes, held against the in-flight budget until this answer is made.
        let _held = r.extensions().get::<Charge>().cloned();
        match self.begin_trace(&r) {
            None => Ok(Response::new(
                self.infer(r.into_inner(), deadline, None).await?,
            )),
            Some(trace) => self.infer_traced(r, deadline, trace).await,
        }
    }

    type ModelStreamInferStream = AnswerStream;

    async fn model_stream_infer(
        &self,
        r: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<AnswerStream>, Status> {
        // The stream's metadata, whose traceparent each traced message sits under.
        let metadata = self
            .inference
            .tracing()
            .is_exporting()
            .then(|| Arc::new(r.metadata().clone()));
        let mut incoming = r.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_OUT_BUFFER);
        let service = self.clone();
        let drain = self.inference.drain().clone();
        // The stream counts as in flight until its last answer is handed on, so that a
        // drain waits for the answers to what it has read, not only for their computing.
        let open = self.inference.in_flight().admit();
        // One future type for every answer, so that they queue in one FuturesOrdered.
        let answer = move |request: pb::ModelInferRequest| {
            let (service, metadata) = (service.clone(), metadata.clone());
            async move { service.stream_answer(request, metadata.as_deref()).await }
        };
        tokio::spawn(async move {
            let _open = open;
            let mut pending = FuturesOrdered::new();
            // Stops reading at the client's end of stream, a transport error, or a drain;
            // what was read is still answered. Why it stopped early, if it did, ends the
            // stream as its status.
            let mut reading = true;
            let mut ended_early: Option<Status> = None;
            loop {
                if !reading && pending.is_empty() {
                    break;
                }
                tokio::select! {
                    Some(answer) = pending.next(), if !pending.is_empty() => {
                        if tx.send(Ok(answer)).await.is_err() {
                            return; // the client has gone: drop the rest uncomputed
                        }
                    }
                    message = incoming.message(), if reading && pending.len() < STREAM_IN_FLIGHT => match message {
                        Ok(Some(request)) => pending.push_back(answer(request)),
                        Ok(None) => reading = false,
                        Err(status) => {
                            reading = false;
                            ended_early = Some(status);
                        }
                    },
                    () = drain.signaled(), if reading => {
                        // What has already arrived is answered (each refused: the server
                        // is shutting down); the rest is the client's to resend.
                        while let Some(Ok(Some(request))) = incoming.message().now_or_never() {
                            pending.push_back(answer(request));
                        }
                        reading = false;
                        ended_early = Some(Status::unavailable(
                            "server is shutting down: this stream reads no more requests; every request read was answered",
                        ));
                    }
                }
            }
            if let Some(status) = ended_early {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn model_config(
        &self,
        r: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = r.into_inner();
        let model = self.ready_model(&r.name, &r.version)?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(messages::model_config(&model)),
        }))
    }

    async fn model_statistics(
        &self,
        r: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = r.into_inner();
        let models = if r.name.is_empty() {
            self.inference.repository().registry().served(None)
        } else if r.version.is_empty() {
            let all = self.inference.repository().registry().served(Some(&r.name));
            if all.is_empty() {
                // Says why: unknown, or known but not ready.
                self.ready_model(&r.name, "")?;
            }
            all
        } else {
            vec![self.ready_model(&r.name, &r.version)?]
        };
        let model_stats = models.iter().map(|m| messages::statistics(m)).collect();
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        r: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let ready_only = r.into_inner().ready;
        let models = self
            .inference
            .repository()
            .registry()
            .index()
            .into_iter()
            .filter(|row| !ready_only || row.status == Some(VersionStatus::Ready))
            .map(|row| pb::repository_index_response::ModelIndex {
                name: row.name,
                version: row.version,
                state: row.status.map_or("", |s| s.as_str()).into(),
                reason: row.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        r: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let r = r.into_inner();
        let mut config = None;
        for (key, value) in &r.parameters {
            match (key.as_str(), &value.parameter_choice) {
                ("config", Some(pb::model_repository_parameter::ParameterChoice::StringParam(text))) => {
                    config = Some(text.as_str());
                }
                (file, _) if file.starts_with("file:") => return Err(extensions::refuse_model_file(&r.model_name, file)),
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "RepositoryModelLoad parameter '{key}': only `config` (a string holding the model's config as JSON or YAML) is supported"
                    )))
                }
            }
        }
        self.control.load(&r.model_name, config).await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let r = r.into_inner();
        let mut dependents = false;
        for (key, value) in &r.parameters {
            match (key.as_str(), &value.parameter_choice) {
                ("unload_dependents", Some(pb::model_repository_parameter::ParameterChoice::BoolParam(on))) => {
                    dependents = *on;
                }
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "RepositoryModelUnload parameter '{key}': only `unload_dependents` (a bool) is supported"
                    )))
                }
            }
        }
        self.control.unload(&r.model_name, dependents).await?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        r: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryStatusResponse>, Status> {
        Ok(Response::new(extensions::shm_status(
            &self.shared_memory,
            &r.into_inner().name,
        )?))
    }

    async fn system_shared_memory_register(
        &self,
        r: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryRegisterResponse>, Status> {
        let r = r.into_inner();
        self.shared_memory
            .register(&r.name, &r.key, r.offset, r.byte_size)
            .map_err(InferError::from)?;
        Ok(Response::new(pb::SystemSharedMemoryRegisterResponse {}))
    }

    async fn system_shared_memory_unregister(
        &self,
        r: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryUnregisterResponse>, Status> {
        self.shared_memory
            .unregister(&r.into_inner().name)
            .map_err(InferError::from)?;
        Ok(Response::new(pb::SystemSharedMemoryUnregisterResponse {}))
    }

    async fn cuda_shared_memory_status(
        &self,
        r: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryStatusResponse>, Status> {
        // No CUDA region can be registered: all of them is none, and any one is unknown.
        let name = r.into_inner().name;
        if !name.is_empty() {
            return Err(InferError::from(ShmError::NotFound(name)).into());
        }
        Ok(Response::new(Default::default()))
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryRegisterResponse>, Status> {
        extensions::unimplemented("CudaSharedMemoryRegister", extensions::CUDA_SHM)
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryUnregisterResponse>, Status> {
        // Clients clear CUDA regions before they start; there are never any to clear.
        Ok(Response::new(pb::CudaSharedMemoryUnregisterResponse {}))
    }

    async fn trace_setting(
        &self,
        r: Request<pb::TraceSettingRequest>,
    ) -> Result<Response<pb::TraceSettingResponse>, Status> {
        Ok(Response::new(extensions::trace_setting(
            &self.inference,
            r.into_inner(),
        )?))
    }

    async fn log_settings(
        &self,
        r: Request<pb::LogSettingsRequest>,
    ) -> Result<Response<pb::LogSettingsResponse>, Status> {
        Ok(Response::new(extensions::log_settings(r.into_inner())?))
    }
}
