//! HTTP's floor: a bare hyper server of KServe v2's infer route that parses the request's
//! JSON (and the binary extension's header) as wharf must, and answers each input back as
//! an output, with no model, queue or validation. `benches/overhead.py --http` measures
//! wharf's HTTP front end against it.
//!
//!     cargo run --release --example http_echo -- 127.0.0.1:9000
//!
//! Metadata and config describe Triton's `simple` (INT32 INPUT0/INPUT1 [-1, 16]) for any
//! name, so that perf_analyzer can build its requests; `/v2` lists no extensions, so
//! perf_analyzer asks for no statistics.

use std::{convert::Infallible, net::SocketAddr};

use axum::{
    body::{to_bytes, Body, Bytes},
    http::{self, header::CONTENT_TYPE, Method, Request, Response, StatusCode},
};
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<Input>,
}

#[derive(Deserialize)]
struct Input {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Serialize)]
struct InferResponse {
    model_name: String,
    model_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: Vec<Output>,
}

#[derive(Serialize)]
struct Output {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
}

fn answer(status: StatusCode, body: impl Into<Body>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("a valid response")
}

fn bad(message: impl std::fmt::Display) -> Response<Body> {
    answer(
        StatusCode::BAD_REQUEST,
        json!({ "error": message.to_string() }).to_string(),
    )
}

/// The inputs back as outputs: JSON data as it came, binary parts in the same order.
fn echo(model: &str, header: &[u8], binary: Bytes) -> Response<Body> {
    let request: InferRequest = match serde_json::from_slice(header) {
        Ok(r) => r,
        Err(e) => return bad(e),
    };
    let outputs = request
        .inputs
        .into_iter()
        .map(|input| Output {
            name: input.name.replace("INPUT", "OUTPUT"),
            shape: input.shape,
            datatype: input.datatype,
            parameters: input.parameters,
            data: input.data,
        })
        .collect();
    let response = InferResponse {
        model_name: model.to_owned(),
        model_version: "1",
        id: request.id,
        outputs,
    };
    let mut body = serde_json::to_vec(&response).expect("serialisable");
    let json_length = body.len();
    body.extend_from_slice(&binary);
    let mut reply = answer(StatusCode::OK, body);
    if !binary.is_empty() {
        reply
            .headers_mut()
            .insert(HEADER_LENGTH, json_length.into());
        reply.headers_mut().insert(
            CONTENT_TYPE,
            http::HeaderValue::from_static("application/octet-stream"),
        );
    }
    reply
}

fn metadata(model: &str) -> Value {
    let tensor = |name: &str| json!({ "name": name, "datatype": "INT32", "shape": [-1, 16] });
    json!({
        "name": model,
        "versions": ["1"],
        "platform": "echo",
        "inputs": [tensor("INPUT0"), tensor("INPUT1")],
        "outputs": [tensor("OUTPUT0"), tensor("OUTPUT1")],
    })
}

fn config(model: &str) -> Value {
    let tensor = |name: &str| json!({ "name": name, "data_type": "TYPE_INT32", "dims": [16] });
    json!({
        "name": model,
        "platform": "echo",
        "max_batch_size": 8,
        "input": [tensor("INPUT0"), tensor("INPUT1")],
        "output": [tensor("OUTPUT0"), tensor("OUTPUT1")],
    })
}

async fn route(request: Request<hyper::body::Incoming>) -> Result<Response<Body>, Infallible> {
    let path: Vec<String> = request
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect();
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    let method = request.method().clone();
    Ok(match (method, path.as_slice()) {
        (Method::GET, ["v2"]) => answer(
            StatusCode::OK,
            json!({ "name": "http_echo", "version": "0", "extensions": [] }).to_string(),
        ),
        (Method::GET, ["v2", "health", _]) | (Method::GET, ["v2", "models", _, "ready"]) => {
            answer(StatusCode::OK, "")
        }
        (Method::GET, ["v2", "models", model]) => {
            answer(StatusCode::OK, metadata(model).to_string())
        }
        (Method::GET, ["v2", "models", model, "config"]) => {
            answer(StatusCode::OK, config(model).to_string())
        }
        (Method::POST, ["v2", "models", model, "infer"]) => {
            let model = (*model).to_owned();
            let header_length = request
                .headers()
                .get(HEADER_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
            let body = match to_bytes(Body::new(request.into_body()), 64 << 20).await {
                Ok(body) => body,
                Err(e) => return Ok(bad(e)),
            };
            match header_length {
                Some(n) if n <= body.len() => echo(&model, &body[..n], body.slice(n..)),
                Some(_) => bad("Inference-Header-Content-Length is past the body"),
                None => echo(&model, &body, Bytes::new()),
            }
        }
        _ => answer(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into())
        .parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("http_echo listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(route))
                .await;
        });
    }
}
