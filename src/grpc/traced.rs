//! ModelInfer under a server span: the caller's W3C context read from the metadata, the
//! span ended with the answer's status, and its `traceparent` on the answer.

use std::time::Duration;

use opentelemetry::KeyValue;
use tonic::{metadata::MetadataMap, Request, Response, Status};
use tracing::Instrument;

use super::{pb, service::InferenceService};
use crate::{
    error::InferError,
    trace::{MetadataCarrier, ServerTrace},
};

impl InferenceService {
    /// The request's server span, where tracing is on and this request is traced.
    pub(super) fn begin_trace(&self, r: &Request<pb::ModelInferRequest>) -> Option<ServerTrace> {
        self.begin_trace_of(r.metadata(), r.get_ref(), "ModelInfer")
    }

    /// A server span for `request`, sent by `method` with `metadata` (a stream's, for each
    /// of its messages), where tracing is on and it is traced.
    fn begin_trace_of(
        &self,
        metadata: &MetadataMap,
        request: &pb::ModelInferRequest,
        method: &'static str,
    ) -> Option<ServerTrace> {
        let tracing = self.inference().tracing();
        if !tracing.is_exporting() {
            return None;
        }
        tracing.begin(
            &request.model_name,
            &MetadataCarrier(metadata),
            format!("inference.GRPCInferenceService/{method}"),
            vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "inference.GRPCInferenceService"),
                KeyValue::new("rpc.method", method),
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
        finish(trace, &answer);
        let mut response = Response::new(answer?);
        if let Some(value) = traceparent.and_then(|v| v.parse().ok()) {
            response.metadata_mut().insert("traceparent", value);
        }
        Ok(response)
    }

    /// One message of a stream, traced where the stream's metadata is given (tracing is
    /// on) and the message is sampled; the stream's `traceparent` is every message's
    /// parent.
    pub(super) async fn infer_in_stream(
        &self,
        request: pb::ModelInferRequest,
        metadata: Option<&MetadataMap>,
    ) -> Result<pb::ModelInferResponse, InferError> {
        let Some(trace) =
            metadata.and_then(|m| self.begin_trace_of(m, &request, "ModelStreamInfer"))
        else {
            return self.infer(request, None, None).await;
        };
        let answer = self
            .infer(request, None, Some(trace.context()))
            .instrument(trace.log_span())
            .await;
        finish(trace, &answer);
        answer
    }
}

/// Ends a server span with the answer's gRPC status.
fn finish<T>(trace: ServerTrace, answer: &Result<T, InferError>) {
    let code = match answer {
        Ok(_) => tonic::Code::Ok,
        Err(e) => super::status::code(e),
    };
    trace.finish(
        vec![KeyValue::new("rpc.grpc.status_code", code as i64)],
        answer.as_ref().err().map(InferError::message),
    );
}
