//! ModelInfer under a server span: the caller's W3C context read from the metadata, the
//! span ended with the answer's status, and its `traceparent` on the answer.

use std::time::Duration;

use opentelemetry::KeyValue;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{pb, service::InferenceService};
use crate::{
    error::InferError,
    trace::{MetadataCarrier, ServerTrace},
};

impl InferenceService {
    /// The request's server span, where tracing is on and this request is traced.
    pub(super) fn begin_trace(&self, r: &Request<pb::ModelInferRequest>) -> Option<ServerTrace> {
        let tracing = self.inference().tracing();
        if !tracing.is_exporting() {
            return None;
        }
        let request = r.get_ref();
        tracing.begin(
            &request.model_name,
            &MetadataCarrier(r.metadata()),
            "inference.GRPCInferenceService/ModelInfer",
            vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "inference.GRPCInferenceService"),
                KeyValue::new("rpc.method", "ModelInfer"),
                KeyValue::new("wharf.protocol", "grpc"),
                KeyValue::new("wharf.model", request.model_name.clone()),
                KeyValue::new("wharf.model_version", request.model_version.clone()),
                KeyValue::new("wharf.request_id", request.id.clone()),
            ],
        )
    }

    /// Answers `r` inside its server span, which ends with the answer's status.
    pub(super) async fn infer_traced(
        &self,
        r: Request<pb::ModelInferRequest>,
        deadline: Option<Duration>,
        trace: ServerTrace,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let answer = self
            .infer(r.into_inner(), deadline, Some(trace.context()))
            .instrument(trace.log_span())
            .await;
        let traceparent = trace.traceparent();
        let code = match &answer {
            Ok(_) => tonic::Code::Ok,
            Err(e) => super::status::code(e),
        };
        trace.finish(
            vec![KeyValue::new("rpc.grpc.status_code", code as i64)],
            answer.as_ref().err().map(InferError::message),
        );
        let mut response = Response::new(answer?);
        if let Some(value) = traceparent.and_then(|v| v.parse().ok()) {
            response.metadata_mut().insert("traceparent", value);
        }
        Ok(response)
    }
}
