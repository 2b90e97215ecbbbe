//! Where a model folder's config is, and its two readers: YAML and Triton's text format
//! (or a load request's protobuf JSON), which end in the same checks.

use std::path::{Path, PathBuf};

use std::num::NonZeroU32;

use super::{pbtxt, BackendKind, InstanceGroup, InstanceKind, ModelConfig, Parameters, Warmup};

/// The config files a model folder may hold, by reader.
pub const YAML_FILE: &str = "config.yaml";
pub const PBTXT_FILE: &str = "config.pbtxt";

/// The config file of the model folder `dir`: `configs/<custom>.pbtxt` where a custom
/// config name is set and that file exists (Triton's `--model-config-name`), else
/// `config.pbtxt` or `config.yaml`. None: the folder has no config. Both is an error,
/// since neither would be the obvious winner.
pub fn locate(dir: &Path, custom: Option<&str>) -> Result<Option<PathBuf>, String> {
    if let Some(custom) = custom {
        let chosen = dir.join("configs").join(format!("{custom}.pbtxt"));
        if chosen.is_file() {
            return Ok(Some(chosen));
        }
    }
    let (yaml, pbtxt) = (dir.join(YAML_FILE), dir.join(PBTXT_FILE));
    match (yaml.is_file(), pbtxt.is_file()) {
        (true, true) => Err(format!(
            "{}: holds both {YAML_FILE} and {PBTXT_FILE}; keep one",
            dir.display()
        )),
        (true, false) => Ok(Some(yaml)),
        (false, true) => Ok(Some(pbtxt)),
        (false, false) => Ok(None),
    }
}

impl ModelConfig {
    /// The config of model folder `dir` (see `locate`), or the empty config where it has
    /// none; errors start with the file.
    pub fn from_dir(dir: &Path, custom: Option<&str>) -> Result<ModelConfig, String> {
        match locate(dir, custom)? {
            Some(path) => Self::from_file(&path),
            None => Ok(ModelConfig::default()),
        }
    }

    /// Reads and validates `path` (YAML, or text format where it ends in `.pbtxt`); every
    /// error message starts with the file and the key.
    pub fn from_file(path: &Path) -> Result<ModelConfig, String> {
        let size = std::fs::metadata(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?
            .len();
        if size > pbtxt::MAX_FILE_BYTES as u64 {
            return Err(format!(
                "{}: {size} bytes is over the limit of {} bytes for a model config",
                path.display(),
                pbtxt::MAX_FILE_BYTES
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let read = if path.extension().is_some_and(|e| e == "pbtxt") {
            Self::from_pbtxt(&text)
        } else {
            Self::from_yaml(&text)
        };
        read.map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Triton's protobuf text format, against Triton's full schema.
    pub fn from_pbtxt(text: &str) -> Result<ModelConfig, String> {
        Self::from_triton(pbtxt::parse_text(text)?)
    }

    /// A load request's config override: protobuf JSON of Triton's `ModelConfig`, as
    /// Triton parses it (`{"max_batch_size": "16"}` is valid).
    pub fn from_protobuf_json(text: &str) -> Result<ModelConfig, String> {
        Self::from_triton(pbtxt::parse_json(text)?)
    }

    fn from_triton(message: prost_reflect::DynamicMessage) -> Result<ModelConfig, String> {
        let read = pbtxt::read(&message)?;
        let mut config = Self::finish(serde_path_to_error::deserialize(read.fields))?;
        config.warnings = read.warnings;
        Ok(config)
    }

    pub fn from_yaml(text: &str) -> Result<ModelConfig, String> {
        // An empty file is a valid, empty config.
        if text.trim().is_empty() {
            return Ok(ModelConfig::default());
        }
        Self::finish(serde_path_to_error::deserialize(
            serde_yaml::Deserializer::from_str(text),
        ))
    }

    /// The checks every reader shares, after its own parse.
    fn finish<E: std::fmt::Display>(
        parsed: Result<ModelConfig, serde_path_to_error::Error<E>>,
    ) -> Result<ModelConfig, String> {
        let mut config = parsed.map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            if key == "." {
                inner.to_string()
            } else {
                format!("key `{key}`: {inner}")
            }
        })?;
        config.lift_wharf_parameters()?;
        config.split_preference()?;
        config.validate()?;
        if config.is_ensemble() {
            config.validate_ensemble()?;
        } else if config.ensemble_scheduling.is_some() {
            return Err("key `ensemble_scheduling`: only for `platform: ensemble`".into());
        }
        config.params = Parameters::parse(&config.parameters, config.engine_kind())
            .map_err(|(key, what)| format!("key `{key}`: {what}"))?;
        Ok(config)
    }
}

/// wharf's own settings, which Triton's schema has no field for, as `parameters` keys, so
/// that a `config.pbtxt` stays valid Triton text format; YAML may use them too.
pub const ENGINES_KEY: &str = "engines";
pub const MEMORY_BUDGET_KEY: &str = "memory_budget";
pub const VERSION_TRAFFIC_KEY: &str = "version_traffic";
pub const MODEL_WARMUP_KEY: &str = "model_warmup";

impl ModelConfig {
    /// Takes wharf's own keys out of `parameters` into the fields they set: `engines`
    /// ("onnxruntime,tract"), `memory_budget` (per instance, every group), `version_traffic`
    /// ("1:90,2:10") and `model_warmup` ("false"). A key that contradicts its field is an
    /// error naming both.
    fn lift_wharf_parameters(&mut self) -> Result<(), String> {
        use serde::Deserialize;
        let mut take = |key: &str| self.parameters.remove(key).map(|v| v.string_value);
        let (engines, budget, traffic, warmup) = (
            take(ENGINES_KEY),
            take(MEMORY_BUDGET_KEY),
            take(VERSION_TRAFFIC_KEY),
            take(MODEL_WARMUP_KEY),
        );
        let at = |key: &str, what: String| format!("key `parameters.{key}`: {what}");
        if let Some(engines) = engines {
            let names: Vec<&str> = engines.split(',').map(str::trim).collect();
            let kinds = names
                .iter()
                .map(|n| {
                    BackendKind::deserialize(serde::de::value::StrDeserializer::<
                        serde::de::value::Error,
                    >::new(n))
                    .map_err(|_| at(ENGINES_KEY, format!("`{n}` is not one of wharf's engines")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if let (Some(first), Some(given)) = (kinds.first(), self.backend_preference.first()) {
                if first != given {
                    return Err(at(
                        ENGINES_KEY,
                        format!(
                            "starts with {} but backend is {}; name the same engine first",
                            first.as_str(),
                            given.as_str()
                        ),
                    ));
                }
            }
            self.backend_preference = kinds;
        }
        if let Some(budget) = budget {
            let size: bytesize::ByteSize = budget.parse().map_err(|_| {
                at(
                    MEMORY_BUDGET_KEY,
                    format!("expected a size such as 512MiB, found `{budget}`"),
                )
            })?;
            let groups = self.instance_group.get_or_insert_with(|| {
                vec![InstanceGroup {
                    name: None,
                    count: NonZeroU32::MIN,
                    kind: InstanceKind::Auto,
                    gpus: Vec::new(),
                    memory_budget: None,
                }]
            });
            for group in groups {
                group.memory_budget.get_or_insert(size);
            }
        }
        if let Some(traffic) = traffic {
            let shares = traffic
                .split(',')
                .map(|pair| {
                    let (version, share) = pair.split_once(':')?;
                    Some((version.trim().parse().ok()?, share.trim().parse().ok()?))
                })
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    at(
                        VERSION_TRAFFIC_KEY,
                        format!("expected shares such as 1:90,2:10, found `{traffic}`"),
                    )
                })?;
            if self.version_traffic.replace(shares).is_some() {
                return Err(at(
                    VERSION_TRAFFIC_KEY,
                    "version_traffic is given twice".into(),
                ));
            }
        }
        if let Some(warmup) = warmup {
            let on: bool = warmup.parse().map_err(|_| {
                at(
                    MODEL_WARMUP_KEY,
                    format!("expected true or false, found `{warmup}`"),
                )
            })?;
            if matches!(self.model_warmup, Some(Warmup::Samples(_))) {
                return Err(at(
                    MODEL_WARMUP_KEY,
                    "the config also lists warm-up samples".into(),
                ));
            }
            self.model_warmup = Some(Warmup::Enabled(on));
        }
        Ok(())
    }
}
