//! The one table from serving errors to gRPC status codes.

use tonic::{Code, Status};

use crate::{
    backend::BackendError,
    control::ControlError,
    error::{clip, InferError, MAX_MESSAGE_BYTES},
    repository::LoadError,
    shared_memory::ShmError,
};

pub fn code(error: &InferError) -> Code {
    match error {
        InferError::ModelNotFound(_) | InferError::VersionNotFound { .. } => Code::NotFound,
        InferError::ModelUnavailable { .. } | InferError::ShuttingDown => Code::Unavailable,
        InferError::InvalidArgument(_) => Code::InvalidArgument,
        InferError::QueueFull { .. }
        | InferError::InflightBytes(_)
        | InferError::IntermediateBytes { .. } => Code::ResourceExhausted,
        InferError::Step { source, .. } => code(source),
        InferError::DeadlineExceeded { .. } => Code::DeadlineExceeded,
        InferError::Backend { source, .. } => match source {
            BackendError::ShapeRejected { .. }
            | BackendError::Unsupported(_)
            | BackendError::BadInput(_) => Code::InvalidArgument,
            BackendError::Load(_)
            | BackendError::Execution(_)
            | BackendError::Panicked(_)
            | BackendError::BadOutput(_) => Code::Internal,
        },
        InferError::WorkerGone(_) => Code::Internal,
        InferError::SharedMemory(e) => match e {
            ShmError::Disabled => Code::Unimplemented,
            ShmError::AlreadyExists(_) => Code::AlreadyExists,
            ShmError::NotFound(_) => Code::NotFound,
            ShmError::Invalid(_) => Code::InvalidArgument,
            ShmError::Exhausted(_) | ShmError::OverBudget(_) => Code::ResourceExhausted,
            ShmError::Io { .. } => Code::Internal,
        },
    }
}

impl From<InferError> for Status {
    fn from(error: InferError) -> Status {
        Status::new(code(&error), error.message())
    }
}

/// Why a version did not load, by whose move it is: the model's files or config
/// (INVALID_ARGUMENT), a file or folder missing (NOT_FOUND), a budget it does not fit
/// (RESOURCE_EXHAUSTED), the load timeout (DEADLINE_EXCEEDED), or wharf or the engine
/// failing (INTERNAL).
pub fn load_code(error: &LoadError) -> Code {
    match error {
        LoadError::Config(_)
        | LoadError::Signature { .. }
        | LoadError::Repository(_)
        | LoadError::Ensemble(_)
        | LoadError::Warmup(_) => Code::InvalidArgument,
        // The engine could not read the model file, or does not run what it holds.
        LoadError::Engine(
            BackendError::Load(_)
            | BackendError::ShapeRejected { .. }
            | BackendError::Unsupported(_)
            | BackendError::BadInput(_),
        ) => Code::InvalidArgument,
        LoadError::NoModelFile(_) | LoadError::NoFolder { .. } => Code::NotFound,
        LoadError::Budget(_) | LoadError::GpuBudget(_) => Code::ResourceExhausted,
        LoadError::TimedOut(_) => Code::DeadlineExceeded,
        LoadError::Engine(
            BackendError::Execution(_) | BackendError::Panicked(_) | BackendError::BadOutput(_),
        )
        | LoadError::Panicked(_)
        | LoadError::Workers(_)
        | LoadError::Thread(_)
        | LoadError::ThreadLost => Code::Internal,
    }
}

impl From<ControlError> for Status {
    fn from(error: ControlError) -> Status {
        let code = match &error {
            ControlError::NotAllowed(_) => Code::FailedPrecondition,
            ControlError::NotFound(_) | ControlError::NoFolder(_) => Code::NotFound,
            ControlError::BadConfig { .. } => Code::InvalidArgument,
            ControlError::Load { source, .. } => load_code(source.first()),
        };
        Status::new(code, clip(&error.to_string(), MAX_MESSAGE_BYTES))
    }
}
