//! A model's `parameters` block, parsed once when its config is read: every key wharf
//! reads, its type, its default and its error, in one place.

use std::{collections::BTreeMap, time::Duration};

use crate::backend::onnxruntime::{options, OrtParameters};

use serde::Deserialize;

use super::engine::BackendKind;

/// One entry of a `parameters` block as Triton writes it: `key: { string_value: "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParameterValue {
    /// Protobuf leaves an empty string unwritten, so `{}` is `""`.
    #[serde(default)]
    pub string_value: String,
}

/// How formed batches are padded (`batch_buckets`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Buckets {
    /// `none`: never padded.
    None,
    /// `max`: every batch padded to the most rows a call takes.
    Max,
    /// Row counts such as `1,2,4,8`: padded to the smallest that holds the batch (the most
    /// rows a call takes is always one).
    Sizes(Vec<usize>),
}

/// Whose parameters a block holds: an engine's (by backend) or an ensemble's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParameterOwner {
    Engine(BackendKind),
    Ensemble,
    /// A built-in processing step reads its own keys when it is built.
    Builtin,
}

/// Bytes an ensemble request may hold between its steps unless `max_intermediate_bytes`
/// says otherwise: a 40-megapixel photo decoded and resized for a detector is ~600 MB, a
/// cheque ~20 MB.
pub const DEFAULT_MAX_INTERMEDIATE_BYTES: u64 = 256 << 20;

/// What the `parameters` keys say, typed; unset keys keep these defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameters {
    /// None: on a GPU with dynamic batching, the powers of two up to the maximum (unless
    /// `pad_batches` is false); elsewhere no padding.
    pub batch_buckets: Option<Buckets>,
    /// `pad_batches: false` turns the GPU default padding off.
    pub pad_batches: bool,
    /// `latency_objective_ms`: overrides the server's `--latency-objective-ms`.
    pub latency_objective: Option<Duration>,
    pub onnxruntime: OrtParameters,
    /// An ensemble's `max_intermediate_bytes`: what one request may hold between steps.
    pub max_intermediate_bytes: u64,
}

impl Default for Parameters {
    fn default() -> Self {
        Parameters {
            batch_buckets: None,
            pad_batches: true,
            latency_objective: None,
            onnxruntime: OrtParameters::default(),
            max_intermediate_bytes: DEFAULT_MAX_INTERMEDIATE_BYTES,
        }
    }
}

/// Keys of the scheduler's, with what each takes.
const SCHEDULING_KEYS: [(&str, &str); 2] = [
    ("pad_batches", "true or false"),
    ("batch_buckets", "max, none, or row counts such as 1,2,4,8"),
];

const LATENCY_OBJECTIVE_KEY: &str = "latency_objective_ms";

const INTERMEDIATE_BYTES_KEY: &str = "max_intermediate_bytes";

impl Parameters {
    /// Parses the block; an error is the key path (`parameters.<key>[.string_value]`) and
    /// what was expected.
    pub fn parse(
        given: &BTreeMap<String, ParameterValue>,
        owner: ParameterOwner,
    ) -> Result<Parameters, (String, String)> {
        let mut parsed = Parameters::default();
        if owner == ParameterOwner::Builtin {
            return Ok(parsed);
        }
        for (key, value) in given {
            let value = value.string_value.as_str();
            let wrong = |expected: &str| {
                Err((
                    format!("parameters.{key}.string_value"),
                    format!("expected {expected}, found `{value}`"),
                ))
            };
            let backend = match owner {
                ParameterOwner::Engine(backend) => backend,
                ParameterOwner::Ensemble if key == INTERMEDIATE_BYTES_KEY => {
                    match value.parse::<bytesize::ByteSize>() {
                        Ok(size) if size.as_u64() > 0 => {
                            parsed.max_intermediate_bytes = size.as_u64()
                        }
                        _ => return wrong("a size above zero, such as 256MiB"),
                    }
                    continue;
                }
                ParameterOwner::Ensemble | ParameterOwner::Builtin => {
                    return Err((
                        format!("parameters.{key}"),
                        format!("an ensemble takes only {INTERMEDIATE_BYTES_KEY}"),
                    ))
                }
            };
            if key == INTERMEDIATE_BYTES_KEY {
                return Err((
                    format!("parameters.{key}"),
                    "applies to ensembles (platform: ensemble) only".into(),
                ));
            }
            if key == LATENCY_OBJECTIVE_KEY {
                match value.parse::<u64>() {
                    Ok(ms) if ms >= 1 => parsed.latency_objective = Some(Duration::from_millis(ms)),
                    _ => return wrong("a whole number of milliseconds >= 1"),
                }
                continue;
            }
            if let Some((_, expected)) = SCHEDULING_KEYS.iter().find(|(k, _)| k == key) {
                match (key.as_str(), value) {
                    ("pad_batches", "true" | "false") => parsed.pad_batches = value == "true",
                    ("batch_buckets", "none") => parsed.batch_buckets = Some(Buckets::None),
                    ("batch_buckets", "max") => parsed.batch_buckets = Some(Buckets::Max),
                    ("batch_buckets", list) => {
                        let sizes: Option<Vec<usize>> = list
                            .split(',')
                            .map(|n| n.trim().parse::<usize>().ok().filter(|n| *n >= 1))
                            .collect();
                        match sizes {
                            Some(sizes) => parsed.batch_buckets = Some(Buckets::Sizes(sizes)),
                            None => return wrong(expected),
                        }
                    }
                    _ => return wrong(expected),
                }
            } else {
                match parsed.onnxruntime.set(key, value) {
                    Ok(()) => {}
                    Err(options::ParameterError::Expected(expected)) => return wrong(expected),
                    Err(options::ParameterError::Unknown) => {
                        let known: Vec<&str> = SCHEDULING_KEYS
                            .iter()
                            .chain(&options::KEYS)
                            .map(|(k, _)| *k)
                            .chain([LATENCY_OBJECTIVE_KEY])
                            .collect();
                        return Err((
                            format!("parameters.{key}"),
                            format!("unknown parameter; expected one of {}", known.join(", ")),
                        ));
                    }
                }
            }
            if backend != BackendKind::Onnxruntime {
                return Err((
                    format!("parameters.{key}"),
                    "engine parameters apply to backend onnxruntime only".into(),
                ));
            }
        }
        Ok(parsed)
    }

    /// The row counts formed batches are padded up to for a model that batches
    /// (`enabled`) up to `max` rows a call, `on_gpu` or not; empty: no padding.
    /// Measured on an H200: one session fed batches of 1 and 8 in turn took 40x (cls) to
    /// 100x (rec) longer per call than fed one size, as cuDNN re-plans every convolution
    /// at each change of shape; the onnxruntime engine gives each bucket a session of its
    /// own.
    pub fn bucket_rows(&self, enabled: bool, max: usize, on_gpu: bool) -> Vec<usize> {
        if !enabled {
            return Vec::new();
        }
        let mut buckets = match &self.batch_buckets {
            Some(Buckets::None) => return Vec::new(),
            Some(Buckets::Max) => vec![max],
            Some(Buckets::Sizes(sizes)) => sizes.iter().copied().filter(|n| *n < max).collect(),
            // Measured on an H200 (benches/README.md): buckets served rec 1.1-1.4x the
            // rows/s of padding to the maximum, cls the same; sessions cost memory, not time.
            None if on_gpu && self.pad_batches => std::iter::successors(Some(1), |r| Some(r * 2))
                .take_while(|r| *r < max)
                .collect(),
            None => return Vec::new(),
        };
        buckets.push(max);
        buckets.sort_unstable();
        buckets.dedup();
        buckets
    }
}
