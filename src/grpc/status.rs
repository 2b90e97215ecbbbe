//! The one table from serving errors to gRPC status codes.

use tonic::{Code, Status};

use crate::{backend::BackendError, control::ControlError, error::InferError};

pub fn code(error: &InferError) -> Code {
    match error {
        InferError::ModelNotFound(_) | InferError::VersionNotFound { .. } => Code::NotFound,
        InferError::ModelUnavailable { .. } | InferError::ShuttingDown => Code::Unavailable,
        InferError::InvalidArgument(_) => Code::InvalidArgument,
        InferError::QueueFull { .. }
        | InferError::InflightBytes { .. }
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
    }
}

impl From<InferError> for Status {
    fn from(error: InferError) -> Status {
        Status::new(code(&error), error.message())
    }
}

impl From<ControlError> for Status {
    fn from(error: ControlError) -> Status {
        let code = match &error {
            ControlError::NotAllowed(_) => Code::FailedPrecondition,
            ControlError::NotFound(_) => Code::NotFound,
            ControlError::BadConfig { .. } | ControlError::Load { .. } => Code::InvalidArgument,
        };
        Status::new(code, error.to_string())
    }
}
