//! The operator's page at `/`: static files built into the binary (no CDN), which call
//! only this server's own KServe v2 routes.

use axum::{
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
};

/// What the page may do: its own scripts and styles, images it made from a chosen file,
/// and calls back to this server; nothing framed, nothing fetched from elsewhere.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
    form-action 'none'";

/// A file of the page, by the path it is served at.
pub struct Asset {
    content_type: &'static str,
    body: &'static str,
}

impl Asset {
    pub fn find(path: &str) -> Option<Asset> {
        let (content_type, body) = match path {
            "" | "index.html" => ("text/html; charset=utf-8", include_str!("page/index.html")),
            "page/app.js" => (
                "text/javascript; charset=utf-8",
                include_str!("page/app.js"),
            ),
            "page/style.css" => ("text/css; charset=utf-8", include_str!("page/style.css")),
            "page/icon.svg" => ("image/svg+xml", include_str!("page/icon.svg")),
            _ => return None,
        };
        Some(Asset { content_type, body })
    }
}

impl IntoResponse for Asset {
    fn into_response(self) -> Response {
        let mut response = self.body.into_response();
        let headers = response.headers_mut();
        let set = |name, value| (name, HeaderValue::from_static(value));
        for (name, value) in [
            set(header::CONTENT_TYPE, self.content_type),
            set(header::CONTENT_SECURITY_POLICY, POLICY),
            set(header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Small, and they change with the binary: always asked again.
            set(header::CACHE_CONTROL, "no-cache"),
        ] {
            headers.insert(name, value);
        }
        response
    }
}
