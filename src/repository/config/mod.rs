//! A model's config: one typed `ModelConfig` with two readers, `config.yaml` (Triton's
//! field names in YAML) and Triton's own `config.pbtxt` (`pbtxt`), parsed strictly and
//! validated, with errors that name the file, the key and what was expected.

use std::{collections::BTreeMap, num::NonZeroU32, path::Path};

pub use crate::batching::policy::TimeoutAction;

use bytesize::ByteSize;
use serde::{Deserialize, Deserializer};

pub use super::engine::BackendKind;
pub use super::parameters::ParameterValue;
use super::parameters::{ParameterOwner, Parameters};
use crate::tensor::DataType;

mod pbtxt;
mod read;
pub mod text_format;
mod triton;
mod validate;

pub use read::{locate, PBTXT_FILE, YAML_FILE};

/// The file as written; every key is optional so that a bare ONNX model needs no config.
/// Read it through `from_file` or `from_yaml`, which validate it and fill `params`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Triton allows the name to be repeated in the config; it must match the folder.
    pub name: Option<String>,
    /// The engine, or an ordered preference of engines (`[onnxruntime, tract]`): the
    /// first whose runtime is present serves the model (`resolve_engine`). Once parsed,
    /// `backend` is the first named and `backend_fallbacks` the rest.
    #[serde(default, rename = "backend", deserialize_with = "engine_preference")]
    pub backend_preference: Vec<BackendKind>,
    #[serde(skip)]
    pub backend: BackendKind,
    #[serde(skip)]
    pub backend_fallbacks: Vec<BackendKind>,
    /// Triton's `platform`: `ensemble` makes the model a pipeline over other models
    /// (`ensemble_scheduling`); engines are chosen by `backend`.
    pub platform: Option<Platform>,
    pub ensemble_scheduling: Option<EnsembleScheduling>,
    /// Largest batch a request or a formed batch may carry; 0 means the model has no batch
    /// dimension. Read from the ONNX graph where absent.
    pub max_batch_size: Option<u32>,
    pub input: Option<Vec<TensorConfig>>,
    pub output: Option<Vec<TensorConfig>>,
    pub dynamic_batching: Option<DynamicBatching>,
    pub instance_group: Option<Vec<InstanceGroup>>,
    pub model_warmup: Option<Warmup>,
    pub version_policy: Option<VersionPolicy>,
    /// Shares of the requests that name no version, by version (`{1: 90, 2: 10}`), for
    /// gray releases; only READY versions take a share. Without it such requests go to the
    /// highest READY version. Keys are numbers in YAML, or numeric strings (JSON's keys,
    /// as a RepositoryModelLoad `config` carries them).
    #[serde(default, deserialize_with = "version_keyed")]
    pub version_traffic: Option<BTreeMap<u64, u32>>,
    /// The file inside each version folder; Triton's key, default `model.onnx`.
    pub default_model_filename: Option<String>,
    /// Engine and scheduling settings in Triton's form, `key: { string_value: "..." }`,
    /// as written; `params` holds them typed.
    #[serde(default)]
    pub parameters: BTreeMap<String, ParameterValue>,
    /// `parameters`, parsed when the file is read.
    #[serde(skip)]
    pub params: Parameters,
    /// Fields of Triton's schema that were read but are not acted on, one line each,
    /// logged when a version loads.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// `backend: tract` or `backend: [onnxruntime, tract]`.
fn engine_preference<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<BackendKind>, D::Error> {
    use serde::de::{value::StrDeserializer, Error};
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let names = match OneOrMany::deserialize(de).map_err(|_| {
        D::Error::custom(
            "expected an engine (tract, onnxruntime, or a built-in step), or a list of engines \
             in order of preference such as [onnxruntime, tract]",
        )
    })? {
        OneOrMany::One(name) => vec![name],
        OneOrMany::Many(names) if names.is_empty() => {
            return Err(D::Error::custom("expected at least one engine"))
        }
        OneOrMany::Many(names) => names,
    };
    names
        .iter()
        .map(|name| {
            BackendKind::deserialize(StrDeserializer::<serde::de::value::Error>::new(name)).map_err(
                |_| {
                    D::Error::custom(format!(
                        "`{name}` is not one of wharf's engines: wharf serves ONNX models on \
                         tract or onnxruntime, and runs its built-in steps (image_decode, \
                         db_postprocess, text_crop, text_lines, ctc_decode)"
                    ))
                },
            )
        })
        .collect()
}

/// Triton's `platform`. Triton's other platforms (TensorRT, TensorFlow, PyTorch) name
/// engines wharf does not have, so a config naming one is refused by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Platform {
    #[serde(rename = "ensemble")]
    Ensemble,
    /// An ONNX model, on the engines of `backend` (ONNX Runtime, then tract where the
    /// backend is not given).
    #[serde(rename = "onnxruntime_onnx")]
    OnnxruntimeOnnx,
}

/// An ensemble's steps, in Triton's form: each runs a model on tensors of the ensemble's
/// (its inputs, or other steps' outputs), named through the maps.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleScheduling {
    pub step: Vec<EnsembleStep>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleStep {
    pub model_name: String,
    /// -1: the model's latest READY version, looked up at each request.
    #[serde(default = "latest_version")]
    pub model_version: i64,
    /// The step model's input name → the ensemble tensor it reads.
    #[serde(default)]
    pub input_map: BTreeMap<String, String>,
    /// The step model's output name → the ensemble tensor it writes.
    #[serde(default)]
    pub output_map: BTreeMap<String, String>,
}

fn latest_version() -> i64 {
    -1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorConfig {
    pub name: String,
    #[serde(default, deserialize_with = "datatype_opt")]
    pub data_type: Option<DataType>,
    /// Dims without the batch dimension when `max_batch_size > 0`; -1 for any size.
    pub dims: Option<Vec<i64>>,
    /// Triton's image layout hint (`FORMAT_NCHW`, `FORMAT_NHWC`) for clients that
    /// preprocess; it does not change how the tensor is read.
    #[serde(default)]
    pub format: Format,
    /// The shape the model takes (inputs) or gives (outputs), where it differs from the
    /// shape on the wire (`dims`): `{shape: [1, 3, 224, 224]}`. Batch dimension excluded.
    pub reshape: Option<Reshape>,
    /// An output's class labels, one per line, in a file of the model folder.
    pub label_filename: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Format {
    #[default]
    #[serde(rename = "FORMAT_NONE")]
    None,
    #[serde(rename = "FORMAT_NHWC")]
    Nhwc,
    #[serde(rename = "FORMAT_NCHW")]
    Nchw,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reshape {
    #[serde(default)]
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicBatching {
    #[serde(default)]
    pub preferred_batch_size: Vec<u32>,
    #[serde(default)]
    pub max_queue_delay_microseconds: u64,
    #[serde(default)]
    pub preserve_ordering: bool,
    #[serde(default)]
    pub priority_levels: u32,
    #[serde(default)]
    pub default_priority_level: u32,
    pub default_queue_policy: Option<QueuePolicy>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuePolicy {
    #[serde(default)]
    pub timeout_action: TimeoutAction,
    #[serde(default)]
    pub default_timeout_microseconds: u64,
    #[serde(default)]
    pub allow_timeout_override: bool,
    /// 0 means wharf's default bound (the queue is never unbounded).
    #[serde(default)]
    pub max_queue_size: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceGroup {
    pub name: Option<String>,
    #[serde(default = "one")]
    pub count: NonZeroU32,
    #[serde(default)]
    pub kind: InstanceKind,
    #[serde(default)]
    pub gpus: Vec<u32>,
    /// wharf's own key: a fixed memory budget per instance ("512MiB").
    pub memory_budget: Option<ByteSize>,
}

fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum InstanceKind {
    #[default]
    #[serde(rename = "KIND_AUTO")]
    Auto,
    #[serde(rename = "KIND_CPU")]
    Cpu,
    #[serde(rename = "KIND_GPU")]
    Gpu,
}

/// `model_warmup: true|false`, or Triton's list of named samples.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Warmup {
    Enabled(bool),
    Samples(Vec<WarmupSample>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupSample {
    pub name: String,
    #[serde(default = "one")]
    pub batch_size: NonZeroU32,
    pub inputs: BTreeMap<String, WarmupInput>,
    #[serde(default = "one")]
    pub count: NonZeroU32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupInput {
    #[serde(deserialize_with = "datatype")]
    pub data_type: DataType,
    pub dims: Vec<i64>,
    #[serde(default)]
    pub zero_data: bool,
    #[serde(default)]
    pub random_data: bool,
}

/// Which versions to serve, written as Triton writes it: `{ latest: { num_versions: 1 } }`,
/// `{ all: {} }` or `{ specific: { versions: [1, 3] } }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "VersionPolicyFile")]
pub enum VersionPolicy {
    Latest { num_versions: NonZeroU32 },
    All {},
    Specific { versions: Vec<u64> },
}

/// The YAML form: a map with exactly one of the three keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionPolicyFile {
    latest: Option<LatestPolicy>,
    all: Option<BTreeMap<String, serde_yaml::Value>>,
    specific: Option<SpecificPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatestPolicy {
    num_versions: NonZeroU32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecificPolicy {
    versions: Vec<u64>,
}

impl TryFrom<VersionPolicyFile> for VersionPolicy {
    type Error = &'static str;

    fn try_from(f: VersionPolicyFile) -> Result<Self, Self::Error> {
        match (f.latest, f.all, f.specific) {
            (Some(l), None, None) => Ok(VersionPolicy::Latest {
                num_versions: l.num_versions,
            }),
            (None, Some(_), None) => Ok(VersionPolicy::All {}),
            (None, None, Some(s)) => Ok(VersionPolicy::Specific {
                versions: s.versions,
            }),
            _ => Err("expected exactly one of latest, all or specific"),
        }
    }
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest {
            num_versions: NonZeroU32::MIN,
        }
    }
}

impl VersionPolicy {
    /// The versions to serve out of those found on disk (sorted ascending).
    pub fn select(&self, found: &[u64]) -> Vec<u64> {
        match self {
            VersionPolicy::Latest { num_versions } => {
                let n = (num_versions.get() as usize).min(found.len());
                found[found.len() - n..].to_vec()
            }
            VersionPolicy::All {} => found.to_vec(),
            VersionPolicy::Specific { versions } => found
                .iter()
                .copied()
                .filter(|v| versions.contains(v))
                .collect(),
        }
    }
}

fn datatype<'de, D: Deserializer<'de>>(d: D) -> Result<DataType, D::Error> {
    let name = String::deserialize(d)?;
    DataType::parse(&name).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown data type `{name}`, expected one of TYPE_BOOL, TYPE_UINT8..TYPE_UINT64, \
             TYPE_INT8..TYPE_INT64, TYPE_FP16, TYPE_BF16, TYPE_FP32, TYPE_FP64, TYPE_STRING \
             (or the same without TYPE_)"
        ))
    })
}

fn datatype_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DataType>, D::Error> {
    datatype(d).map(Some)
}

fn version_keyed<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<u64, u32>>, D::Error> {
    #[derive(Deserialize, PartialEq, Eq, PartialOrd, Ord)]
    #[serde(untagged)]
    enum Key {
        Number(u64),
        Text(String),
    }
    let Some(shares) = Option::<BTreeMap<Key, u32>>::deserialize(d)? else {
        return Ok(None);
    };
    shares
        .into_iter()
        .map(|(key, share)| match key {
            Key::Number(version) => Ok((version, share)),
            Key::Text(text) => text.trim().parse().map(|v| (v, share)).map_err(|_| {
                serde::de::Error::custom(format!(
                    "expected a version number as the key, found '{text}'"
                ))
            }),
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

impl ModelConfig {
    /// `backend` and `backend_fallbacks` from the preference as written.
    fn split_preference(&mut self) -> Result<(), String> {
        let mut written = std::mem::take(&mut self.backend_preference);
        if written.is_empty() && self.platform == Some(Platform::OnnxruntimeOnnx) {
            written = vec![BackendKind::Onnxruntime, BackendKind::Tract];
        }
        let Some((first, rest)) = written.split_first() else {
            return Ok(());
        };
        if !rest.is_empty() {
            let engines = [BackendKind::Onnxruntime, BackendKind::Tract];
            if let Some(other) = written.iter().find(|k| !engines.contains(k)) {
                return Err(format!(
                    "key `backend`: a list names engines to fall back between (onnxruntime, \
                     tract), not `{}`",
                    other.as_str()
                ));
            }
            if rest.contains(first) || (rest.len() > 1 && rest[0] == rest[1]) {
                return Err("key `backend`: an engine is named twice".into());
            }
        }
        self.backend = *first;
        self.backend_fallbacks = rest.to_vec();
        self.backend_preference = written;
        Ok(())
    }

    /// This config with `engine` serving it (one of its preference), its parameters read
    /// again for that engine.
    pub fn served_by(&self, engine: BackendKind) -> Result<ModelConfig, String> {
        let mut chosen = ModelConfig {
            backend: engine,
            backend_fallbacks: Vec::new(),
            ..self.clone()
        };
        chosen.params = Parameters::parse(&chosen.parameters, chosen.engine_kind())
            .map_err(|(key, what)| format!("key `{key}` for {}: {what}", engine.as_str()))?;
        Ok(chosen)
    }

    pub fn is_ensemble(&self) -> bool {
        self.platform == Some(Platform::Ensemble)
    }

    /// The models an ensemble's steps call, in step order (none for another model).
    pub fn step_models(&self) -> impl Iterator<Item = &str> {
        self.ensemble_scheduling
            .iter()
            .flat_map(|s| &s.step)
            .map(|step| step.model_name.as_str())
    }

    /// What the `parameters` block is read for.
    fn engine_kind(&self) -> ParameterOwner {
        if self.is_ensemble() {
            ParameterOwner::Ensemble
        } else if self.backend.is_builtin() {
            ParameterOwner::Builtin
        } else {
            ParameterOwner::Engine(self.backend)
        }
    }

    /// Whether the model runs on a GPU.
    pub fn on_gpu(&self) -> bool {
        self.instance_group
            .iter()
            .flatten()
            .any(|g| g.kind == InstanceKind::Gpu)
    }

    /// The per-instance memory budget: the smallest one given in `instance_group`.
    pub fn memory_budget(&self) -> Option<u64> {
        self.instance_group
            .iter()
            .flatten()
            .filter_map(|g| g.memory_budget)
            .map(|b| b.as_u64())
            .min()
    }

    /// The GPU a KIND_GPU model runs on: the first group's first listed device, else 0.
    pub fn gpu_device(&self) -> u32 {
        self.instance_group
            .iter()
            .flatten()
            .next()
            .and_then(|g| g.gpus.first())
            .copied()
            .unwrap_or(0)
    }

    pub fn model_filename(&self) -> &str {
        self.default_model_filename
            .as_deref()
            .unwrap_or("model.onnx")
    }

    pub fn instance_count(&self) -> usize {
        match &self.instance_group {
            Some(groups) if !groups.is_empty() => {
                groups.iter().map(|g| g.count.get() as usize).sum()
            }
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_shares_are_keyed_by_yaml_numbers_or_json_strings() {
        let split = |text: &str| ModelConfig::from_yaml(text).map(|c| c.version_traffic);
        let expected = Some(BTreeMap::from([(1, 90), (2, 10)]));
        assert_eq!(split("version_traffic: {1: 90, 2: 10}").unwrap(), expected);
        assert_eq!(
            split(r#"{"version_traffic": {"1": 90, "2": 10}}"#).unwrap(),
            expected
        );
        let bad = split(r#"{"version_traffic": {"one": 90}}"#).unwrap_err();
        assert!(
            bad.contains("version_traffic") && bad.contains("'one'"),
            "{bad}"
        );
    }

    #[test]
    fn cudnn_searches_exhaustively_only_where_asked() {
        let search = |yaml: &str| {
            ModelConfig::from_yaml(&format!("backend: onnxruntime\n{yaml}"))
                .unwrap()
                .params
                .onnxruntime
                .cudnn_exhaustive
        };
        let fixed = "input: [{ name: x, data_type: TYPE_FP32, dims: [3, 48, 192] }]\n";
        let asked = |v: &str| {
            format!("parameters: {{ cudnn_conv_algo_search: {{ string_value: {v} }} }}\n")
        };
        assert!(!search(fixed), "heuristic, even with every dim fixed");
        assert!(search(&format!("{fixed}{}", asked("EXHAUSTIVE"))));
        assert!(!search(&format!("{fixed}{}", asked("HEURISTIC"))));
    }

    #[test]
    fn parses_the_documented_example() {
        let c = ModelConfig::from_yaml(
            r#"
backend: tract
max_batch_size: 8
input:  [{ name: x, data_type: TYPE_FP32, dims: [3, 48, 320] }]
output: [{ name: y, data_type: FP32, dims: [40, 6625] }]
dynamic_batching:
  preferred_batch_size: [4, 8]
  max_queue_delay_microseconds: 2000
  default_queue_policy: { max_queue_size: 256, default_timeout_microseconds: 0, allow_timeout_override: true }
instance_group:
  - { count: 2, kind: KIND_CPU, memory_budget: 512MiB }
model_warmup: true
version_policy: { latest: { num_versions: 2 } }
"#,
        )
        .unwrap();
        assert_eq!(c.max_batch_size, Some(8));
        assert_eq!(c.input.as_ref().unwrap()[0].data_type, Some(DataType::Fp32));
        assert_eq!(c.instance_count(), 2);
        assert_eq!(
            c.instance_group.unwrap()[0].memory_budget.unwrap().as_u64(),
            512 * 1024 * 1024
        );
        assert_eq!(c.version_policy.unwrap().select(&[1, 2, 3]), vec![2, 3]);
    }

    #[test]
    fn errors_name_the_key_and_the_expectation() {
        let cases = [
            ("max_batch_sise: 8", "max_batch_sise"),
            ("max_batch_size: -1", "max_batch_size"),
            (
                "input: [{name: x, data_type: FLOAT32}]",
                "input[0].data_type",
            ),
            ("input: [{name: x, dims: [0]}]", "input[0].dims"),
            (
                "dynamic_batching: {preferred_batch_size: [a]}",
                "dynamic_batching.preferred_batch_size[0]",
            ),
            (
                "max_batch_size: 4\ndynamic_batching: {preferred_batch_size: [8]}",
                "dynamic_batching.preferred_batch_size",
            ),
            ("instance_group: [{count: 0}]", "instance_group[0].count"),
            (
                "instance_group: [{kind: KIND_GPU}]",
                "instance_group[0].kind",
            ),
            (
                "instance_group: [{memory_budget: lots}]",
                "instance_group[0].memory_budget",
            ),
            ("backend: pytorch", "backend"),
            (
                "parameters: {latency_objective_ms: {string_value: \"0\"}}",
                "parameters.latency_objective_ms.string_value",
            ),
            (
                "backend: onnxruntime\nparameters: {arena_extend_strategy: {string_value: kDouble}}",
                "parameters.arena_extend_strategy.string_value",
            ),
            (
                "backend: onnxruntime\nparameters: {cudnn_conv_use_max_workspace: {string_value: \"1\"}}",
                "parameters.cudnn_conv_use_max_workspace.string_value",
            ),
            (
                "backend: onnxruntime\nparameters: {pad_batches: {string_value: \"no\"}}",
                "parameters.pad_batches.string_value",
            ),
            (
                "backend: onnxruntime\nparameters: {batch_buckets: {string_value: \"1,0,8\"}}",
                "parameters.batch_buckets.string_value",
            ),
            (
                "backend: onnxruntime\nparameters: {batch_buckets: {string_value: \"4,eight\"}}",
                "parameters.batch_buckets.string_value",
            ),
            (
                "backend: onnxruntime\nparameters: {cuda_graph: {string_value: \"yes\"}}",
                "parameters.cuda_graph.string_value",
            ),
            (
                "parameters: {intra_op_thread_count: {string_value: \"2\"}}",
                "parameters.intra_op_thread_count",
            ),
            ("version_policy: {newest: {}}", "version_policy.newest"),
            (
                "version_policy: {all: {}, latest: {num_versions: 1}}",
                "version_policy",
            ),
            (
                "default_model_filename: ../x.onnx",
                "default_model_filename",
            ),
        ];
        for (yaml, key) in cases {
            let err = ModelConfig::from_yaml(yaml).unwrap_err();
            assert!(err.contains(&format!("`{key}`")), "{yaml:?} gave {err:?}");
        }
        let err = ModelConfig::from_yaml("backend: pytorch").unwrap_err();
        assert!(
            err.contains("key `backend`: `pytorch` is not one of wharf's engines"),
            "{err}"
        );
    }

    #[test]
    fn backend_may_be_an_ordered_preference_of_engines() {
        let config = ModelConfig::from_yaml("backend: [onnxruntime, tract]").unwrap();
        assert_eq!(config.backend, BackendKind::Onnxruntime);
        assert_eq!(config.backend_fallbacks, vec![BackendKind::Tract]);
        let served = config.served_by(BackendKind::Tract).unwrap();
        assert_eq!(
            (served.backend, served.backend_fallbacks.len()),
            (BackendKind::Tract, 0)
        );
        let single = ModelConfig::from_yaml("backend: onnxruntime").unwrap();
        assert!(
            single.backend_fallbacks.is_empty(),
            "one engine means that engine"
        );
        for (yaml, why) in [
            ("backend: [tract, tract]", "named twice"),
            ("backend: [onnxruntime, text_crop]", "not `text_crop`"),
            ("backend: []", "at least one engine"),
        ] {
            let err = ModelConfig::from_yaml(yaml).unwrap_err();
            assert!(err.contains(why), "{yaml}: {err}");
        }
    }

    #[test]
    fn version_policies_select() {
        let found = [1, 2, 5];
        assert_eq!(VersionPolicy::default().select(&found), vec![5]);
        assert_eq!(VersionPolicy::All {}.select(&found), vec![1, 2, 5]);
        assert_eq!(
            VersionPolicy::Specific {
                versions: vec![2, 9]
            }
            .select(&found),
            vec![2]
        );
    }
}
