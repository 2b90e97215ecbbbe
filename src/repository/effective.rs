//! A repository's configs as wharf would serve them, without serving: each model's config
//! read, completed from its ONNX graph (auto-complete) and checked against it, in Triton's
//! message. `wharf config` prints, converts and validates with it.

use std::path::Path;

use prost::Message;

use super::{autocomplete, config::ModelConfig, is_folder, read_model, spec::ModelSpec};
use crate::{backend::Signature, config::LoadConfig, proto};

/// One model's effective config.
#[derive(Debug)]
pub struct Effective {
    pub config: ModelConfig,
    pub message: proto::ModelConfig,
}

/// Every model folder of the repository (or those `only` names), sorted, each with its
/// effective config or every reason it could not be read, as the loader words them.
pub fn read_repository(
    settings: &LoadConfig,
    only: &[String],
) -> std::io::Result<Vec<(String, Result<Effective, String>)>> {
    let root = &settings.model_repository;
    let mut names: Vec<String> = std::fs::read_dir(root)?
        .flatten()
        .filter(is_folder)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .filter(|n| only.is_empty() || only.contains(n))
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|name| {
            let effective = effective(&name, &root.join(&name), settings);
            (name, effective)
        })
        .collect())
}

fn effective(name: &str, dir: &Path, settings: &LoadConfig) -> Result<Effective, String> {
    let (config, versions) = read_model(name, dir, None, settings.model_config_name.as_deref())?;
    let (config, spec) = if config.is_ensemble() {
        let spec = ModelSpec::declared(&config)?;
        (config, spec)
    } else if config.backend.is_builtin() {
        let step = super::loader::open_step(&config, dir)?;
        let unbatched = ModelConfig {
            max_batch_size: Some(config.max_batch_size.unwrap_or(0)),
            ..config
        };
        let spec = ModelSpec::resolve(&unbatched, step.signature())?;
        (unbatched, spec)
    } else {
        // The newest version the policy serves stands for the others.
        let version = versions.last().expect("read_model selects at least one");
        let path = dir.join(version.to_string()).join(config.model_filename());
        let graph = graph(&path)?;
        let config =
            autocomplete::complete(&config, &graph, !settings.disable_auto_complete_config)?;
        let spec =
            ModelSpec::resolve(&config, &graph).map_err(|e| format!("{}: {e}", path.display()))?;
        (config, spec)
    };
    let message = config.to_triton(name, &spec);
    Ok(Effective { config, message })
}

/// What the ONNX file at `path` declares, read from its protobuf alone.
fn graph(path: &Path) -> Result<Signature, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let proto = tract_onnx::pb::ModelProto::decode(bytes.as_slice())
        .map_err(|e| format!("{}: not an ONNX model: {e}", path.display()))?;
    Ok(crate::backend::onnx::signature(&proto))
}

impl Effective {
    fn dynamic(&self) -> prost_reflect::DynamicMessage {
        prost_reflect::DynamicMessage::decode(
            proto::message("ModelConfig"),
            self.message.encode_to_vec().as_slice(),
        )
        .expect("a message this build encoded")
    }

    /// Triton's text format, as Triton's own files are written.
    pub fn to_pbtxt(&self) -> String {
        super::config::text_format::write(&self.dynamic())
    }

    /// Triton's JSON (`/config`'s form, set fields only).
    pub fn to_json(&self) -> serde_json::Value {
        let options = prost_reflect::SerializeOptions::new()
            .stringify_64_bit_integers(false)
            .use_proto_field_name(true)
            .skip_default_fields(true);
        self.dynamic()
            .serialize_with_options(serde_json::value::Serializer, &options)
            .expect("protobuf messages serialise")
    }

    /// wharf's YAML: the same fields, with `backend` as the engine preference it is.
    pub fn to_yaml(&self) -> String {
        let mut json = self.to_json();
        if !self.config.backend_fallbacks.is_empty() {
            let engines: Vec<&str> = std::iter::once(self.config.backend)
                .chain(self.config.backend_fallbacks.iter().copied())
                .map(|b| b.as_str())
                .collect();
            json["backend"] = serde_json::json!(engines);
        }
        serde_yaml::to_string(&json).expect("JSON values serialise to YAML")
    }
}
