//! Triton's extension RPCs beside inference: system shared memory, log and trace settings, and
//! the answers for what wharf does not take (CUDA shared memory, model files in a load).

use tonic::Status;

use super::pb;
use crate::{
    error::InferError,
    inference::Inference,
    logging::{self, Setting},
    shared_memory::SharedMemory,
    trace::Change,
};

/// Triton's extensions that wharf implements, over both front ends, in Triton's order
/// (`system_shared_memory` is added where it is allowed).
pub(super) const EXTENSIONS: &[&str] = &[
    "model_repository",
    "model_repository(unload_dependents)",
    "model_configuration",
    "binary_tensor_data",
    "statistics",
    "classification",
    "logging",
    "trace",
];

/// TraceSetting: the settings in force for the model (or the server, `model_name`
/// empty), after applying those the request gives; a key with no values clears it.
pub(crate) fn trace_setting(
    inference: &Inference,
    request: pb::TraceSettingRequest,
) -> Result<pb::TraceSettingResponse, InferError> {
    let model = (!request.model_name.is_empty()).then_some(request.model_name.as_str());
    if let Some(model) = model {
        inference.repository().registry().lookup(model, "")?;
    }
    let settings = inference.tracing().settings();
    let changes: Vec<Change> = request
        .settings
        .into_iter()
        .map(|(key, value)| (key, (!value.value.is_empty()).then_some(value.value)))
        .collect();
    if !changes.is_empty() {
        settings
            .update(model, changes)
            .map_err(InferError::invalid)?;
    }
    Ok(pb::TraceSettingResponse {
        settings: settings
            .get(model)
            .into_iter()
            .map(|(key, value)| (key, pb::trace_setting_response::SettingValue { value }))
            .collect(),
    })
}

/// The registered regions, all (`name` empty) or one, as SystemSharedMemoryStatus answers.
pub(super) fn shm_status(
    shm: &SharedMemory,
    name: &str,
) -> Result<pb::SystemSharedMemoryStatusResponse, Status> {
    use pb::system_shared_memory_status_response::RegionStatus;
    let regions = shm
        .status(name)
        .map_err(InferError::from)?
        .into_iter()
        .map(|region| {
            let status = RegionStatus {
                name: region.name.clone(),
                key: region.key.clone(),
                offset: region.offset,
                byte_size: region.byte_size,
            };
            (region.name.clone(), status)
        })
        .collect();
    Ok(pb::SystemSharedMemoryStatusResponse { regions })
}

/// LogSettings: no settings reads them, settings change them (all or none).
pub(super) fn log_settings(
    request: pb::LogSettingsRequest,
) -> Result<pb::LogSettingsResponse, Status> {
    use pb::{
        log_settings_request::setting_value::ParameterChoice as Asked,
        log_settings_response::{setting_value::ParameterChoice as Answered, SettingValue},
    };
    let mut changes = std::collections::BTreeMap::new();
    for (key, value) in request.settings {
        let value = match value.parameter_choice {
            Some(Asked::BoolParam(b)) => Setting::Bool(b),
            Some(Asked::Uint32Param(n)) => Setting::Uint(n),
            Some(Asked::StringParam(t)) => Setting::Text(t),
            None => {
                return Err(Status::invalid_argument(format!(
                    "log setting '{key}' has no value"
                )))
            }
        };
        changes.insert(key, value);
    }
    let now = if changes.is_empty() {
        logging::settings()
    } else {
        logging::update(&changes).map_err(Status::invalid_argument)?
    };
    let settings = now
        .into_iter()
        .map(|(key, value)| {
            let choice = match value {
                Setting::Bool(b) => Answered::BoolParam(b),
                Setting::Uint(n) => Answered::Uint32Param(n),
                Setting::Text(t) => Answered::StringParam(t),
            };
            (
                key,
                SettingValue {
                    parameter_choice: Some(choice),
                },
            )
        })
        .collect();
    Ok(pb::LogSettingsResponse { settings })
}

/// A load that sends model files (`file:<path>` parameters, which wharf does not take).
/// A path Triton could not write (a component longer than NAME_MAX) fails as Triton's
/// does, INTERNAL "failed to poll from model repository", which its model-control example
/// checks; any other is UNIMPLEMENTED.
pub(super) fn refuse_model_file(model: &str, key: &str) -> Status {
    let path = &key["file:".len()..];
    if let Some(long) = path.split('/').find(|part| part.len() > 255) {
        return Status::internal(format!(
            "failed to poll from model repository: failed to load '{model}': file '{}...': a path component of {} bytes is longer than NAME_MAX (255)",
            long.chars().take(16).collect::<String>(),
            long.len()
        ));
    }
    Status::unimplemented(format!(
        "failed to load '{model}': model files sent with a load ({key}) are not supported by wharf; put them in the model repository"
    ))
}

pub(super) fn unimplemented<T>(rpc: &str, why: &str) -> Result<tonic::Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{rpc} is not implemented by wharf: {why}"
    )))
}

pub(super) const CUDA_SHM: &str =
    "it has no GPU tensor path yet; system shared memory is (--allow-client-shm)";
