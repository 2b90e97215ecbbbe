//! KServe v2 over HTTP/REST with Triton's routes, status codes and binary tensor
//! extension. Each route transcodes a call of the gRPC service (the same checks, errors
//! and core); only inference bodies are read (`infer`) and written (`answer`) here.

mod answer;
mod body;
mod error;
mod extensions;
mod infer;
mod messages;
mod numbers;
mod page;
mod route;
mod serve;

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use bytes::Bytes;
use opentelemetry::KeyValue;
use serde_json::{json, Value};
use tonic::Request as Call;
use tracing::Instrument;

pub use error::{http_status, HttpError};
pub use serve::serve;

use crate::{
    admission::ByteBudget,
    auth::RequireKey,
    error::InferError,
    grpc::{
        pb::{self, grpc_inference_service_server::GrpcInferenceService},
        InferenceService,
    },
    shared_memory::ShmError,
    trace::{HeaderExtractor, ServerTrace, TraceCx},
};
use body::{compress, read_body, response_encoding};
use page::Asset;
use route::{ModelAction, Route};

/// What every route shares.
pub struct HttpApi {
    pub service: InferenceService,
    pub key: RequireKey,
    pub budget: Arc<ByteBudget>,
}

/// The router: every path goes through `route`, which answers unknown paths 404 and
/// wrong methods 405, both with Triton's `{"error": ...}`.
pub fn router(api: Arc<HttpApi>) -> Router {
    Router::new().fallback(handle).with_state(api)
}

const INFER_HEADER_LENGTH: &str = "inference-header-content-length";

async fn handle(State(api): State<Arc<HttpApi>>, mut request: Request) -> Response {
    let accept = request
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(trace) = begin_trace(&api, &request) else {
        return match route(&api, request).await {
            Ok(answer) => answer.into_response(accept.as_deref()),
            Err(error) => error.into_response(),
        };
    };
    // The infer route finds the request's place in its trace here.
    request.extensions_mut().insert(trace.context());
    let (mut response, error) = match route(&api, request).instrument(trace.log_span()).await {
        Ok(answer) => (answer.into_response(accept.as_deref()), None),
        Err(error) => {
            let message = error.message.clone();
            (error.into_response(), Some(message))
        }
    };
    let traceparent = trace.traceparent();
    trace.finish(
        vec![KeyValue::new(
            "http.response.status_code",
            i64::from(response.status().as_u16()),
        )],
        error,
    );
    if let Some(value) = traceparent.and_then(|v| HeaderValue::from_str(&v).ok()) {
        response.headers_mut().insert("traceparent", value);
    }
    response
}

/// An inference request's server span, where tracing is on and this request is traced.
fn begin_trace(api: &HttpApi, request: &Request) -> Option<ServerTrace> {
    let tracing = api.service.inference().tracing();
    if !tracing.is_exporting() {
        return None;
    }
    let Some((
        Route::Model {
            name,
            version,
            action: ModelAction::Infer,
        },
        _,
    )) = Route::parse(request.uri().path())
    else {
        return None;
    };
    let route = if version.is_empty() {
        "/v2/models/{model_name}/infer"
    } else {
        "/v2/models/{model_name}/versions/{model_version}/infer"
    };
    tracing.begin(
        &name,
        &HeaderExtractor(request.headers()),
        format!("POST {route}"),
        vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", route),
            KeyValue::new("url.path", request.uri().path().to_owned()),
            KeyValue::new("wharf.protocol", "http"),
            KeyValue::new("wharf.model", name.clone()),
            KeyValue::new("wharf.model_version", version),
        ],
    )
}

/// A successful answer before it is written.
enum Answer {
    /// 200 with no body (health, ready, load, unload).
    Empty,
    Json(Value),
    /// An inference answer: its JSON header and the bytes after it, if any.
    Infer(Vec<u8>, Option<Bytes>),
    /// A file of the operator's page.
    Page(Asset),
}

impl Answer {
    fn into_response(self, accept_encoding: Option<&str>) -> Response {
        // Only inference answers are compressed, as Triton's: tritonclient's aio client
        // reads every other answer as plain JSON, whatever it offered to accept.
        let (body, binary_after, accept_encoding) = match self {
            Answer::Empty => return StatusCode::OK.into_response(),
            Answer::Page(asset) => return asset.into_response(),
            Answer::Json(value) => (serde_json::to_vec(&value).expect("JSON"), None, None),
            Answer::Infer(header, binary) => (header, binary, accept_encoding),
        };
        let header_len = body.len();
        let (content_type, body) = match binary_after {
            None => ("application/json", body),
            Some(bytes) => {
                let mut all = body;
                all.extend_from_slice(&bytes);
                ("application/octet-stream", all)
            }
        };
        let encoding = response_encoding(accept_encoding);
        let body = match encoding {
            Some(encoding) => compress(encoding, &body).unwrap_or(body),
            None => body,
        };
        let mut response = (StatusCode::OK, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if content_type == "application/octet-stream" {
            headers.insert(INFER_HEADER_LENGTH, HeaderValue::from(header_len));
        }
        if let Some(encoding) = encoding {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
        }
        response
    }
}

async fn route(api: &HttpApi, request: Request) -> Result<Answer, HttpError> {
    let Some((route, method)) = Route::parse(request.uri().path()) else {
        return Err(HttpError::new(StatusCode::NOT_FOUND, "Not Found"));
    };
    // Shared memory and trace take both; all of them answer 501 either way.
    let either = matches!(
        route,
        Route::Unimplemented(_) | Route::Logging | Route::TraceSetting(_)
    );
    if request.method() != method && !(either && request.method() == Method::POST) {
        return Err(HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
        ));
    }
    // Health stays open for probes, and the page's files (no data in them) for a browser
    // whose user has yet to type the key; everything else wants the key, as gRPC's
    // inference service does.
    if !matches!(route, Route::Live | Route::Ready | Route::Page(_)) {
        let authorization = request.headers().get(header::AUTHORIZATION);
        api.key.check(authorization.map(HeaderValue::as_bytes))?;
    }
    let service = &api.service;
    match route {
        Route::Page(asset) => Ok(Answer::Page(asset)),
        Route::Live => Ok(Answer::Empty),
        Route::Ready => {
            let ready = service
                .server_ready(Call::new(pb::ServerReadyRequest {}))
                .await?
                .into_inner()
                .ready;
            // Triton answers a server that is not ready 400 with no body.
            if ready {
                Ok(Answer::Empty)
            } else {
                Err(HttpError::empty(StatusCode::BAD_REQUEST))
            }
        }
        Route::ServerMetadata => Ok(Answer::Json(json!({
            "name": "wharf",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": service.extensions(),
        }))),
        Route::AllStats => {
            let stats = service
                .model_statistics(Call::new(pb::ModelStatisticsRequest::default()))
                .await?;
            Ok(Answer::Json(messages::to_json(
                "ModelStatisticsResponse",
                stats.get_ref(),
            )))
        }
        Route::Index => {
            let body = read_json_body(api, request).await?;
            let ready = match body.get("ready") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(HttpError::bad(format!(
                        "`ready` must be true or false, found {other}"
                    )))
                }
            };
            let index = service
                .repository_index(Call::new(pb::RepositoryIndexRequest {
                    repository_name: String::new(),
                    ready,
                }))
                .await?;
            let json = messages::to_json("RepositoryIndexResponse", index.get_ref());
            Ok(Answer::Json(json["models"].clone()))
        }
        Route::Load(model_name) => {
            let parameters = repository_parameters(read_json_body(api, request).await?)?;
            service
                .repository_model_load(Call::new(pb::RepositoryModelLoadRequest {
                    model_name,
                    parameters,
                    ..Default::default()
                }))
                .await?;
            Ok(Answer::Empty)
        }
        Route::Unload(model_name) => {
            let parameters = repository_parameters(read_json_body(api, request).await?)?;
            service
                .repository_model_unload(Call::new(pb::RepositoryModelUnloadRequest {
                    model_name,
                    parameters,
                    ..Default::default()
                }))
                .await?;
            Ok(Answer::Empty)
        }
        Route::Logging => {
            let changes = if request.method() == Method::POST {
                Some(read_json_body(api, request).await?)
            } else {
                None
            };
            Ok(Answer::Json(extensions::logging(changes)?))
        }
        Route::TraceSetting(model_name) => {
            let changes = if request.method() == Method::POST {
                Some(read_json_body(api, request).await?)
            } else {
                None
            };
            Ok(Answer::Json(extensions::trace_setting(
                service.inference(),
                model_name,
                changes,
            )?))
        }
        Route::ShmStatus(name) => Ok(Answer::Json(extensions::shm_status(
            service.shared_memory(),
            &name,
        )?)),
        Route::ShmRegister(name) => {
            let body = read_json_body(api, request).await?;
            extensions::shm_register(service.shared_memory(), &name, &body)?;
            Ok(Answer::Empty)
        }
        Route::ShmUnregister(name) => {
            service
                .shared_memory()
                .unregister(&name)
                .map_err(InferError::from)?;
            Ok(Answer::Empty)
        }
        Route::CudaShmStatus(name) if name.is_empty() => Ok(Answer::Json(json!([]))),
        Route::CudaShmStatus(name) => Err(InferError::from(ShmError::NotFound(name)).into()),
        Route::CudaShmUnregister => Ok(Answer::Empty),
        Route::Unimplemented(what) => Err(HttpError::new(StatusCode::NOT_IMPLEMENTED, what)),
        Route::Model {
            name,
            version,
            action,
        } => model_route(api, request, name, version, action).await,
    }
}

async fn model_route(
    api: &HttpApi,
    request: Request,
    name: String,
    version: String,
    action: ModelAction,
) -> Result<Answer, HttpError> {
    let service = &api.service;
    match action {
        ModelAction::Metadata => {
            let metadata = service
                .model_metadata(Call::new(pb::ModelMetadataRequest { name, version }))
                .await?;
            Ok(Answer::Json(messages::to_json(
                "ModelMetadataResponse",
                metadata.get_ref(),
            )))
        }
        ModelAction::Ready => {
            let inference = service.inference();
            if inference.is_draining() {
                return Err(HttpError::bad("the server is shutting down"));
            }
            match inference.repository().registry().lookup(&name, &version) {
                Ok(_) => Ok(Answer::Empty),
                Err(e) => Err(HttpError::bad(e.message())),
            }
        }
        ModelAction::Config => {
            let config = service
                .model_config(Call::new(pb::ModelConfigRequest { name, version }))
                .await?
                .into_inner()
                .config
                .unwrap_or_default();
            Ok(Answer::Json(messages::to_json("ModelConfig", &config)))
        }
        ModelAction::Stats => {
            let stats = service
                .model_statistics(Call::new(pb::ModelStatisticsRequest { name, version }))
                .await?;
            Ok(Answer::Json(messages::to_json(
                "ModelStatisticsResponse",
                stats.get_ref(),
            )))
        }
        ModelAction::Infer => infer_route(api, request, name, version).await,
    }
}

async fn infer_route(
    api: &HttpApi,
    request: Request,
    name: String,
    version: String,
) -> Result<Answer, HttpError> {
    let header_len = match request.headers().get(INFER_HEADER_LENGTH) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    HttpError::bad(format!(
                        "Inference-Header-Content-Length must be a byte count, found {value:?}"
                    ))
                })?,
        ),
    };
    let trace = request.extensions().get::<TraceCx>().cloned();
    let (body, _held) = read_body(api, request).await?;
    let inference = Arc::clone(api.service.inference());
    let limit = api.service.max_request_bytes();
    let raw_spec = || {
        inference
            .repository()
            .registry()
            .lookup(&name, &version)
            .map(|model| model.spec.clone())
            .map_err(HttpError::from)
    };
    let shm = api.service.shared_memory();
    let mut decoded = infer::decode(&name, &version, body, header_len, raw_spec, limit, shm)?;
    decoded.request.trace = trace;
    let response = inference.infer(decoded.request).await?;
    let (header, binary) =
        answer::encode(response, &decoded.binary, &decoded.windows).map_err(InferError::from)?;
    Ok(Answer::Infer(header, binary))
}

/// A small JSON body (index, load, unload): `{}` where it is empty.
async fn read_json_body(api: &HttpApi, request: Request) -> Result<Value, HttpError> {
    let (body, _held) = read_body(api, request).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&body).map_err(|e| HttpError::bad(format!("the request's JSON: {e}")))
}

/// A load's or unload's `parameters` as the gRPC request carries them.
fn repository_parameters(
    body: Value,
) -> Result<std::collections::HashMap<String, pb::ModelRepositoryParameter>, HttpError> {
    use pb::model_repository_parameter::ParameterChoice;
    let Some(parameters) = body.get("parameters") else {
        return Ok(Default::default());
    };
    let Value::Object(parameters) = parameters else {
        return Err(HttpError::bad("`parameters` must be an object"));
    };
    parameters
        .iter()
        .map(|(key, value)| {
            let choice = match value {
                Value::String(s) => ParameterChoice::StringParam(s.clone()),
                Value::Bool(b) => ParameterChoice::BoolParam(*b),
                Value::Number(n) if n.is_i64() => {
                    ParameterChoice::Int64Param(n.as_i64().expect("i64"))
                }
                other => {
                    return Err(HttpError::bad(format!(
                        "parameter '{key}' must be a string, a bool or an integer (a config goes \
                         as a string holding its JSON), found {other}"
                    )))
                }
            };
            Ok((
                key.clone(),
                pb::ModelRepositoryParameter {
                    parameter_choice: Some(choice),
                },
            ))
        })
        .collect()
}
