//! KServe v2 over HTTP/REST with Triton's routes, status codes and binary tensor
//! extension. Each route transcodes a call of the gRPC service (the same checks, errors
//! and core); only inference bodies are read (`infer`) and written (`answer`) here.

mod answer;
mod body;
mod error;
mod infer;
mod messages;
mod page;
mod serve;

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use bytes::Bytes;
use serde_json::{json, Value};
use tonic::Request as Call;

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
    logging::{self, Setting},
    shared_memory::ShmError,
};
use body::{compress, read_body, response_encoding};
use page::Asset;

/// Triton's extensions that wharf implements, over both front ends, in Triton's order
/// (`system_shared_memory` is added where it is allowed).
pub const EXTENSIONS: &[&str] = &[
    "model_repository",
    "model_repository(unload_dependents)",
    "model_configuration",
    "binary_tensor_data",
    "statistics",
    "classification",
    "logging",
];

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

async fn handle(State(api): State<Arc<HttpApi>>, request: Request) -> Response {
    let accept = request
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match route(&api, request).await {
        Ok(answer) => answer.into_response(accept.as_deref()),
        Err(error) => error.into_response(),
    }
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

/// A route, from the path's segments (percent-decoded).
enum Route {
    /// The operator's page and its files.
    Page(Asset),
    Live,
    Ready,
    ServerMetadata,
    /// `/v2/models/{m}[/versions/{v}]` and what follows.
    Model {
        name: String,
        version: String,
        action: ModelAction,
    },
    AllStats,
    Index,
    Load(String),
    Unload(String),
    /// Log settings: GET reads them, POST changes them.
    Logging,
    /// System shared memory: one region's or (empty) every region's status, register,
    /// unregister.
    ShmStatus(String),
    ShmRegister(String),
    ShmUnregister(String),
    CudaShmStatus(String),
    CudaShmUnregister,
    /// Triton routes wharf does not serve yet: shared memory, trace, logging.
    Unimplemented(&'static str),
}

enum ModelAction {
    Metadata,
    Ready,
    Config,
    Infer,
    Stats,
}

impl Route {
    /// The route of `path` and the one method it takes (GET, or POST for the others).
    fn parse(path: &str) -> Option<(Route, Method)> {
        let segments: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let s: Vec<&str> = segments.iter().map(String::as_str).collect();
        let get = |route| Some((route, Method::GET));
        let post = |route| Some((route, Method::POST));
        match s.as_slice() {
            [""] | ["index.html"] | ["page", _] => {
                Asset::find(&s.join("/")).and_then(|a| get(Route::Page(a)))
            }
            ["v2"] => get(Route::ServerMetadata),
            ["v2", "health", "live"] => get(Route::Live),
            ["v2", "health", "ready"] => get(Route::Ready),
            ["v2", "models", "stats"] => get(Route::AllStats),
            ["v2", "repository", "index"] | ["v2", "repository", _, "index"] => post(Route::Index),
            ["v2", "repository", "models", m, "load"] => post(Route::Load(m.to_string())),
            ["v2", "repository", "models", m, "unload"] => post(Route::Unload(m.to_string())),
            ["v2", "systemsharedmemory", "status"] => get(Route::ShmStatus(String::new())),
            ["v2", "systemsharedmemory", "region", r, "status"] => {
                get(Route::ShmStatus(r.to_string()))
            }
            ["v2", "systemsharedmemory", "region", r, "register"] => {
                post(Route::ShmRegister(r.to_string()))
            }
            ["v2", "systemsharedmemory", "unregister"] => {
                post(Route::ShmUnregister(String::new()))
            }
            ["v2", "systemsharedmemory", "region", r, "unregister"] => {
                post(Route::ShmUnregister(r.to_string()))
            }
            // No CUDA region can be registered: status lists none, unregistering clears
            // nothing, and registering says why.
            ["v2", "cudasharedmemory", "status"] => get(Route::CudaShmStatus(String::new())),
            ["v2", "cudasharedmemory", "region", r, "status"] => {
                get(Route::CudaShmStatus(r.to_string()))
            }
            ["v2", "cudasharedmemory", "unregister"]
            | ["v2", "cudasharedmemory", "region", _, "unregister"] => post(Route::CudaShmUnregister),
            ["v2", "cudasharedmemory", "region", _, "register"] => Some((
                Route::Unimplemented(
                    "CUDA shared memory is not implemented: wharf has no GPU tensor path yet (system shared memory is, with --allow-client-shm)",
                ),
                Method::POST,
            )),
            ["v2", "trace", "setting"] | ["v2", "models", _, "trace", "setting"] => {
                get(Route::Unimplemented("trace settings are not implemented by wharf yet"))
            }
            ["v2", "logging"] => get(Route::Logging),
            ["v2", "models", m, rest @ ..] => {
                let (version, rest) = match rest {
                    ["versions", v, rest @ ..]
                        if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) =>
                    {
                        (v.to_string(), rest)
                    }
                    ["versions", ..] => return None,
                    rest => (String::new(), rest),
                };
                let (action, method) = match rest {
                    [] => (ModelAction::Metadata, Method::GET),
                    ["ready"] => (ModelAction::Ready, Method::GET),
                    ["config"] => (ModelAction::Config, Method::GET),
                    ["stats"] => (ModelAction::Stats, Method::GET),
                    ["infer"] => (ModelAction::Infer, Method::POST),
                    _ => return None,
                };
                let name = m.to_string();
                Some((
                    Route::Model {
                        name,
                        version,
                        action,
                    },
                    method,
                ))
            }
            _ => None,
        }
    }
}

async fn route(api: &HttpApi, request: Request) -> Result<Answer, HttpError> {
    let Some((route, method)) = Route::parse(request.uri().path()) else {
        return Err(HttpError::new(StatusCode::NOT_FOUND, "Not Found"));
    };
    // Shared memory and trace take both; all of them answer 501 either way.
    let either = matches!(route, Route::Unimplemented(_) | Route::Logging);
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
                log_changes(read_json_body(api, request).await?)?
            } else {
                Default::default()
            };
            let now = if changes.is_empty() {
                logging::settings()
            } else {
                logging::update(&changes).map_err(HttpError::bad)?
            };
            let json: serde_json::Map<String, Value> = now
                .into_iter()
                .map(|(key, value)| {
                    let value = match value {
                        Setting::Bool(b) => Value::Bool(b),
                        Setting::Uint(n) => Value::from(n),
                        Setting::Text(t) => Value::String(t),
                    };
                    (key, value)
                })
                .collect();
            Ok(Answer::Json(Value::Object(json)))
        }
        Route::ShmStatus(name) => {
            let regions = service
                .shared_memory()
                .status(&name)
                .map_err(InferError::from)?;
            let regions: Vec<Value> = regions
                .iter()
                .map(|r| {
                    json!({"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size})
                })
                .collect();
            Ok(Answer::Json(Value::Array(regions)))
        }
        Route::ShmRegister(name) => {
            let body = read_json_body(api, request).await?;
            let key = body.get("key").and_then(Value::as_str).ok_or_else(|| {
                HttpError::bad(format!(
                    "registering shared memory region '{name}' needs \"key\", a string"
                ))
            })?;
            let number = |field: &str| -> Result<u64, HttpError> {
                match body.get(field) {
                    None if field == "offset" => Ok(0),
                    Some(v) => v.as_u64().ok_or_else(|| {
                        HttpError::bad(format!(
                            "registering shared memory region '{name}': \"{field}\" must be a non-negative integer, found {v}"
                        ))
                    }),
                    None => Err(HttpError::bad(format!(
                        "registering shared memory region '{name}' needs \"{field}\""
                    ))),
                }
            };
            service
                .shared_memory()
                .register(&name, key, number("offset")?, number("byte_size")?)
                .map_err(InferError::from)?;
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

/// A `/v2/logging` POST body: an object of settings, each a boolean, a count or a string.
fn log_changes(body: Value) -> Result<std::collections::BTreeMap<String, Setting>, HttpError> {
    let Value::Object(settings) = body else {
        return Err(HttpError::bad(format!(
            "log settings are a JSON object of name: value, found {body}"
        )));
    };
    settings
        .into_iter()
        .map(|(key, value)| {
            let setting = match &value {
                Value::Bool(b) => Setting::Bool(*b),
                Value::String(t) => Setting::Text(t.clone()),
                Value::Number(n) => n
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Setting::Uint)
                    .ok_or_else(|| {
                        HttpError::bad(format!(
                            "log setting '{key}': {n} is not a count (a non-negative integer)"
                        ))
                    })?,
                other => {
                    return Err(HttpError::bad(format!(
                        "log setting '{key}' must be a boolean, a number or a string, found {other}"
                    )))
                }
            };
            Ok((key, setting))
        })
        .collect()
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
    let decoded = infer::decode(&name, &version, body, header_len, raw_spec, limit, shm)?;
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
