//! Triton's extension routes beside inference: log settings and system shared memory,
//! and the `shared_memory_*` parameters an inference body names a region with.

use serde_json::{json, Map, Value};

use super::error::HttpError;
use crate::{
    error::InferError,
    grpc::{self, pb},
    inference::Inference,
    logging::{self, Setting},
    shared_memory::{SharedMemory, ShmParams},
};

/// `/v2/logging`: the settings, after applying `changes` (a POST body) where given.
pub(super) fn logging(changes: Option<Value>) -> Result<Value, HttpError> {
    let changes = changes.map(log_changes).transpose()?.unwrap_or_default();
    let now = if changes.is_empty() {
        logging::settings()
    } else {
        logging::update(&changes).map_err(HttpError::bad)?
    };
    let json: Map<String, Value> = now
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
    Ok(Value::Object(json))
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

/// `/v2[/models/{m}]/trace/setting`: Triton's string-valued JSON, a list for the level;
/// a POST body's `null` clears a key.
pub(super) fn trace_setting(
    inference: &Inference,
    model_name: String,
    changes: Option<Value>,
) -> Result<Value, HttpError> {
    use pb::trace_setting_request::SettingValue;
    let settings = match changes {
        None => Default::default(),
        Some(Value::Object(settings)) => settings
            .into_iter()
            .map(|(key, value)| {
                let values = match value {
                    Value::Null => Vec::new(),
                    Value::String(s) => vec![s],
                    Value::Number(n) => vec![n.to_string()],
                    Value::Array(items) => items
                        .into_iter()
                        .map(|item| match item {
                            Value::String(s) => Ok(s),
                            other => Err(HttpError::bad(format!(
                                "trace setting '{key}': expected strings, found {other}"
                            ))),
                        })
                        .collect::<Result<_, _>>()?,
                    other => {
                        return Err(HttpError::bad(format!(
                            "trace setting '{key}' must be a string, a list of strings or null, found {other}"
                        )))
                    }
                };
                Ok((key, SettingValue { value: values }))
            })
            .collect::<Result<_, HttpError>>()?,
        Some(other) => {
            return Err(HttpError::bad(format!(
                "trace settings are a JSON object of name: value, found {other}"
            )))
        }
    };
    let answer = grpc::extensions::trace_setting(
        inference,
        pb::TraceSettingRequest {
            settings,
            model_name,
        },
    )?;
    Ok(answer
        .settings
        .into_iter()
        .map(|(key, mut value)| {
            let json = if key == "trace_level" || value.value.len() != 1 {
                Value::from(value.value)
            } else {
                Value::String(value.value.remove(0))
            };
            (key, json)
        })
        .collect::<Map<String, Value>>()
        .into())
}

/// `/v2/systemsharedmemory[/region/{name}]/status`.
pub(super) fn shm_status(shm: &SharedMemory, name: &str) -> Result<Value, HttpError> {
    let regions = shm.status(name).map_err(InferError::from)?;
    Ok(regions
        .iter()
        .map(
            |r| json!({"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}),
        )
        .collect())
}

/// `/v2/systemsharedmemory/region/{name}/register` with `{"key", "offset", "byte_size"}`.
pub(super) fn shm_register(shm: &SharedMemory, name: &str, body: &Value) -> Result<(), HttpError> {
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
    shm.register(name, key, number("offset")?, number("byte_size")?)
        .map_err(InferError::from)?;
    Ok(())
}

pub(super) fn is_shm_key(key: &str) -> bool {
    matches!(
        key,
        "shared_memory_region" | "shared_memory_byte_size" | "shared_memory_offset"
    )
}

/// A tensor's `shared_memory_*` parameters, where it names a region.
pub(super) fn shm_params(
    tensor: &str,
    params: &Map<String, Value>,
) -> Result<Option<ShmParams>, HttpError> {
    let Some(region) = params.get("shared_memory_region") else {
        return Ok(None);
    };
    let region = region.as_str().ok_or_else(|| {
        HttpError::bad(format!(
            "'{tensor}': shared_memory_region must be a string, found {region}"
        ))
    })?;
    let number = |key: &str| -> Result<Option<u64>, HttpError> {
        params
            .get(key)
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    HttpError::bad(format!(
                        "'{tensor}': {key} must be a non-negative integer, found {v}"
                    ))
                })
            })
            .transpose()
    };
    let params = ShmParams::new(
        tensor,
        region.to_owned(),
        number("shared_memory_byte_size")?,
        number("shared_memory_offset")?,
    )
    .map_err(InferError::from)?;
    Ok(Some(params))
}
