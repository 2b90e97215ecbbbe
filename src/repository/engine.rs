//! The engines a config's `backend` may name: the two that run ONNX files, and the
//! processing steps written in wharf itself.

use serde::Deserialize;

use crate::backend::ocr::StepKind;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Tract,
    Onnxruntime,
    /// The built-in processing steps of OCR pipelines (`backend::ocr`): no model file.
    #[serde(rename = "image_decode")]
    ImageDecode,
    #[serde(rename = "db_postprocess")]
    DbPostprocess,
    #[serde(rename = "text_crop")]
    TextCrop,
    #[serde(rename = "text_lines")]
    TextLines,
    #[serde(rename = "ctc_decode")]
    CtcDecode,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::Onnxruntime => "onnxruntime",
            BackendKind::ImageDecode => "image_decode",
            BackendKind::DbPostprocess => "db_postprocess",
            BackendKind::TextCrop => "text_crop",
            BackendKind::TextLines => "text_lines",
            BackendKind::CtcDecode => "ctc_decode",
        }
    }

    /// The processing step written in wharf itself that this names, if it names one: no
    /// model file, no warmup to measure.
    pub fn builtin_step(self) -> Option<StepKind> {
        match self {
            BackendKind::Tract | BackendKind::Onnxruntime => None,
            BackendKind::ImageDecode => Some(StepKind::ImageDecode),
            BackendKind::DbPostprocess => Some(StepKind::DbPostprocess),
            BackendKind::TextCrop => Some(StepKind::TextCrop),
            BackendKind::TextLines => Some(StepKind::TextLines),
            BackendKind::CtcDecode => Some(StepKind::CtcDecode),
        }
    }

    pub fn is_builtin(self) -> bool {
        self.builtin_step().is_some()
    }
}
