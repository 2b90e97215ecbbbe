//! The HTTP front end's one error: a status and the message gRPC would give, sent as
//! Triton sends it, `{"error": "<message>"}`; and the one table from gRPC codes to HTTP
//! statuses (Triton's `HttpCodeFromError`).

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use tonic::Code;

use crate::error::{clip, InferError, MAX_MESSAGE_BYTES};

#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
    /// Health and readiness failures carry no body, as Triton's.
    no_body: bool,
    /// An unknown Content-Encoding's answer says which ones are taken.
    accept_encoding: bool,
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
            no_body: false,
            accept_encoding: false,
        }
    }

    /// `status` with an empty body.
    pub fn empty(status: StatusCode) -> HttpError {
        HttpError {
            no_body: true,
            ..HttpError::new(status, "")
        }
    }

    /// With `Accept-Encoding: gzip, deflate` in the answer.
    pub fn accepting_encodings(self) -> HttpError {
        HttpError {
            accept_encoding: true,
            ..self
        }
    }

    /// 400 with `message`: what the request got wrong.
    pub fn bad(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, message)
    }
}

/// Triton's mapping: INTERNAL 500, NOT_FOUND 404, UNAVAILABLE 503, UNIMPLEMENTED 501,
/// anything else 400. Two additions where HTTP has the meaning: a missing or wrong API
/// key is 401, and RESOURCE_EXHAUSTED (a full queue, the in-flight byte budget: what
/// Triton reports as UNAVAILABLE) is 503, so that clients back off and retry.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Internal | Code::DataLoss | Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Unavailable | Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl From<tonic::Status> for HttpError {
    fn from(status: tonic::Status) -> HttpError {
        HttpError::new(http_status(status.code()), status.message())
    }
}

impl From<InferError> for HttpError {
    fn from(error: InferError) -> HttpError {
        HttpError::new(
            http_status(crate::grpc::status::code(&error)),
            error.message(),
        )
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        if self.no_body {
            return self.status.into_response();
        }
        let body = serde_json::json!({ "error": clip(&self.message, MAX_MESSAGE_BYTES) });
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.accept_encoding {
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("gzip, deflate"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_as_tritons_do() {
        let table = [
            (Code::InvalidArgument, StatusCode::BAD_REQUEST),
            (Code::NotFound, StatusCode::NOT_FOUND),
            (Code::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
            (Code::ResourceExhausted, StatusCode::SERVICE_UNAVAILABLE),
            (Code::Internal, StatusCode::INTERNAL_SERVER_ERROR),
            (Code::Unimplemented, StatusCode::NOT_IMPLEMENTED),
            (Code::Unauthenticated, StatusCode::UNAUTHORIZED),
            (Code::FailedPrecondition, StatusCode::BAD_REQUEST),
            (Code::DeadlineExceeded, StatusCode::BAD_REQUEST),
        ];
        for (code, status) in table {
            assert_eq!(http_status(code), status, "{code:?}");
        }
    }
}
