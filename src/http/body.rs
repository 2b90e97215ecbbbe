//! Request bodies in, answers out: the size limit, declared and after decompression, the
//! in-flight byte budget, gzip and deflate both ways.

use std::io::Read;

use axum::{
    extract::Request,
    http::{header, HeaderMap, StatusCode},
};
use bytes::Bytes;

use super::{error::HttpError, HttpApi};

/// How long a request's body may take to arrive once its headers have: a slow body
/// holds its bytes against the in-flight budget, so it must end.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
use crate::{
    error::InferError,
    metrics::{Protocol, Refusal},
};

/// Room for JSON's text around the tensor bytes one request may carry.
fn body_limit(api: &HttpApi) -> usize {
    api.service
        .max_request_bytes()
        .saturating_mul(2)
        .saturating_add(1 << 20)
}

/// The request's body, decompressed, held against the in-flight byte budget until the
/// answer is made. Declared sizes over the limit are refused before a byte is read, and
/// a compressed body may not grow past it.
pub async fn read_body(
    api: &HttpApi,
    request: Request,
) -> Result<(Bytes, crate::admission::Held), HttpError> {
    let limit = body_limit(api);
    let too_large = |size: &dyn std::fmt::Display| {
        HttpError::bad(format!(
            "the request body ({size} bytes) exceeds the maximum allowed value of {limit} bytes \
             (--max-request-size, twice over for JSON's text)"
        ))
    };
    let headers: &HeaderMap = request.headers();
    let declared = match headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| HttpError::bad(format!("a bad Content-Length: {value:?}")))?,
        ),
    };
    if let Some(size) = declared.filter(|size| *size > limit) {
        return Err(too_large(&size));
    }
    let encoding = match headers.get(header::CONTENT_ENCODING) {
        None => None,
        Some(value) => match value
            .to_str()
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            Ok("identity") | Ok("") => None,
            Ok("gzip") => Some("gzip"),
            Ok("deflate") => Some("deflate"),
            _ => {
                return Err(HttpError::new(
                    StatusCode::NOT_IMPLEMENTED,
                    format!(
                        "unsupported Content-Encoding {value:?}: send gzip, deflate or identity"
                    ),
                )
                .accepting_encodings())
            }
        },
    };
    let held = api
        .budget
        .try_hold(declared.unwrap_or(0))
        .inspect_err(|_| {
            api.service
                .inference()
                .repository()
                .metrics()
                .refused(Protocol::Http, Refusal::InflightBytes)
        })
        .map_err(InferError::from)?;
    let reading = axum::body::to_bytes(request.into_body(), limit);
    let body = tokio::time::timeout(BODY_READ_TIMEOUT, reading)
        .await
        .map_err(|_| {
            HttpError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            )
        })?
        .map_err(|e| {
            HttpError::bad(format!(
                "cannot read the request body (at most {limit} bytes): {e}"
            ))
        })?;
    let body = match encoding {
        None => body,
        Some(encoding) => tokio::task::spawn_blocking(move || decompress(encoding, &body, limit))
            .await
            .map_err(|e| HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??,
    };
    Ok((body, held))
}

fn decompress(encoding: &str, body: &[u8], limit: usize) -> Result<Bytes, HttpError> {
    let mut out = Vec::new();
    let reader: Box<dyn Read> = match encoding {
        "gzip" => Box::new(flate2::read::GzDecoder::new(body)),
        _ => Box::new(flate2::read::ZlibDecoder::new(body)),
    };
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| HttpError::bad(format!("the {encoding} body does not decompress: {e}")))?;
    if out.len() > limit {
        return Err(HttpError::bad(format!(
            "the request body decompresses to more than the maximum allowed value of {limit} bytes"
        )));
    }
    Ok(out.into())
}

/// The encoding of the answer: the client's most wanted of gzip, deflate and identity.
pub fn response_encoding(accept: Option<&str>) -> Option<&'static str> {
    let mut best: Option<(&'static str, f32)> = None;
    for item in accept?.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .find_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
            })
            .unwrap_or(1.0);
        let known = match name.as_str() {
            "gzip" => "gzip",
            "deflate" => "deflate",
            "identity" => "identity",
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((known, q));
        }
    }
    best.map(|(name, _)| name)
        .filter(|name| *name != "identity")
}

/// `body` compressed, or None where compressing failed (it then goes out as it is).
pub fn compress(encoding: &str, body: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    let level = flate2::Compression::fast();
    match encoding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
            e.write_all(body).ok()?;
            e.finish().ok()
        }
        _ => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
            e.write_all(body).ok()?;
            e.finish().ok()
        }
    }
}
