//! An HTTP path and method to the route it names: Triton's routes, their versions and the
//! one method each takes.

use axum::http::Method;

use super::page::Asset;

/// A route, from the path's segments (percent-decoded).
pub(super) enum Route {
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
    /// Trace settings, the server's (empty) or a model's: GET reads, POST changes.
    TraceSetting(String),
    /// System shared memory: one region's or (empty) every region's status, register,
    /// unregister.
    ShmStatus(String),
    ShmRegister(String),
    ShmUnregister(String),
    CudaShmStatus(String),
    CudaShmUnregister,
    /// Triton routes wharf does not serve: CUDA shared memory's register.
    Unimplemented(&'static str),
}

pub(super) enum ModelAction {
    Metadata,
    Ready,
    Config,
    Infer,
    Stats,
}

impl Route {
    /// The route of `path` and the one method it takes (GET, or POST for the others).
    pub(super) fn parse(path: &str) -> Option<(Route, Method)> {
        // Borrowed where a segment has no escapes (almost always): no copy per segment.
        let segments: Vec<std::borrow::Cow<str>> = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy())
            .collect();
        let s: Vec<&str> = segments.iter().map(|s| s.as_ref()).collect();
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
            ["v2", "trace", "setting"] => get(Route::TraceSetting(String::new())),
            ["v2", "models", m, "trace", "setting"] if !m.is_empty() => {
                get(Route::TraceSetting(m.to_string()))
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
