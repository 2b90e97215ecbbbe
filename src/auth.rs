//! The optional API key on the inference service: a tonic interceptor that wants
//! `authorization: Bearer <key>` and compares it in constant time. Health and reflection
//! are not behind it, so that probes and tooling work without the key.

use std::{path::Path, sync::Arc};

use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;
use tonic::{service::Interceptor, Request, Status};

/// The key, kept only as its SHA-256: comparing digests takes the same time whatever the
/// presented key shares with the real one, and whatever its length.
#[derive(Clone)]
pub struct ApiKey(Arc<[u8]>);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl PartialEq for ApiKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl ApiKey {
    /// A key from its text; surrounding whitespace (a file's newline) is not part of it.
    pub fn new(key: &str) -> Result<ApiKey, String> {
        let key = key.trim();
        if key.is_empty() {
            return Err("the API key is empty".into());
        }
        Ok(ApiKey(digest(&SHA256, key.as_bytes()).as_ref().into()))
    }

    /// Reads the key from a file (a mounted Kubernetes Secret).
    pub fn from_file(path: &Path) -> Result<ApiKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("API key file {}: {e}", path.display()))?;
        ApiKey::new(&text).map_err(|e| format!("API key file {}: {e}", path.display()))
    }

    fn matches(&self, presented: &str) -> bool {
        let presented = digest(&SHA256, presented.as_bytes());
        self.0.ct_eq(presented.as_ref()).into()
    }
}

/// Lets a request through when no key is configured, or when it carries the key.
#[derive(Clone, Default)]
pub struct RequireKey(pub Option<ApiKey>);

impl RequireKey {
    /// Whether an `authorization` value (None: absent) lets a request through; the same
    /// check for gRPC metadata and HTTP headers.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), Status> {
        let Some(key) = &self.0 else {
            return Ok(());
        };
        let header = authorization
            .ok_or_else(|| Status::unauthenticated("missing `authorization: Bearer <key>`"))?;
        let presented = std::str::from_utf8(header)
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("`authorization` must be `Bearer <key>`"))?;
        if key.matches(presented.trim()) {
            Ok(())
        } else {
            Err(Status::unauthenticated("the API key is not valid"))
        }
    }
}

impl Interceptor for RequireKey {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        self.check(header).map(|()| request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(key: Option<&str>, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut check = RequireKey(key.map(|k| ApiKey::new(k).unwrap()));
        let mut request = Request::new(());
        if let Some(h) = header {
            request
                .metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        check.call(request).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn only_the_right_key_passes() {
        use tonic::Code::Unauthenticated;
        assert_eq!(call(None, None), Ok(()));
        assert_eq!(call(Some("s3cret"), Some("Bearer s3cret")), Ok(()));
        assert_eq!(call(Some("s3cret"), None), Err(Unauthenticated));
        assert_eq!(
            call(Some("s3cret"), Some("Bearer s3cre")),
            Err(Unauthenticated)
        );
        assert_eq!(
            call(Some("s3cret"), Some("Bearer s3cret2")),
            Err(Unauthenticated)
        );
        assert_eq!(call(Some("s3cret"), Some("s3cret")), Err(Unauthenticated));
        assert!(ApiKey::new(" \n").is_err());
        assert_eq!(ApiKey::new("k\n").unwrap(), ApiKey::new("k").unwrap());
        assert_eq!(
            format!("{:?}", ApiKey::new("k").unwrap()),
            "ApiKey(<redacted>)"
        );
    }
}
