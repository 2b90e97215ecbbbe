//! What a model's config may ask of ONNX Runtime: its `parameters` keys parsed once into
//! types, and the session options they become once the model's placement is known.

use std::path::PathBuf;

/// The `parameters` keys ONNX Runtime reads, with what each takes.
pub const KEYS: [(&str, &str); 11] = [
    ("io_binding", "true or false"),
    ("intra_op_spinning", "true or false"),
    ("cuda_graph", "true or false"),
    ("intra_op_thread_count", "a whole number >= 1"),
    ("inter_op_thread_count", "a whole number >= 1"),
    ("cudnn_conv_algo_search", "EXHAUSTIVE or HEURISTIC"),
    ("cudnn_conv_use_max_workspace", "true or false"),
    (
        "arena_extend_strategy",
        "kNextPowerOfTwo or kSameAsRequested",
    ),
    ("tensorrt", "true or false"),
    ("trt_fp16", "true or false"),
    ("trt_engine_cache_path", "a folder path"),
];

/// The ONNX Runtime settings a config gives; unset keys keep these defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct OrtParameters {
    pub io_binding: bool,
    /// None: wherever every call has a fixed shape (see `GpuOptions::cuda_graph`).
    pub cuda_graph: Option<bool>,
    /// None: the cores split between the model's instances.
    pub intra_op_threads: Option<usize>,
    pub inter_op_threads: usize,
    /// Whether a session's threads spin waiting for work (ONNX Runtime's default) rather
    /// than sleep. Off unless asked: the models of a pipeline run at once on the same
    /// cores, and threads that spin take them from the ones with work (PP-OCR on 2 cores:
    /// benches/README.md).
    pub intra_op_spinning: bool,
    /// Only where `cudnn_conv_algo_search: EXHAUSTIVE` asks: the search is paid again at
    /// every change of a session's input shape (cuDNN 9 keeps one plan per convolution),
    /// and measured on an H200 it cost far more than it won.
    pub cudnn_exhaustive: bool,
    pub cudnn_max_workspace: bool,
    /// ONNX Runtime's default (next power of two) unless asked: on PP-OCR rec it held
    /// 953 MiB of the H200 against 1,253 MiB growing to 1,325 MiB with kSameAsRequested
    /// (fragmentation).
    pub arena_same_as_requested: bool,
    pub tensorrt: bool,
    pub trt_fp16: bool,
    pub trt_engine_cache: Option<PathBuf>,
}

impl Default for OrtParameters {
    fn default() -> Self {
        OrtParameters {
            io_binding: false,
            cuda_graph: None,
            intra_op_threads: None,
            inter_op_threads: 1,
            intra_op_spinning: false,
            cudnn_exhaustive: false,
            cudnn_max_workspace: true,
            arena_same_as_requested: false,
            tensorrt: false,
            trt_fp16: false,
            trt_engine_cache: None,
        }
    }
}

/// Why a `parameters` entry was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParameterError {
    /// Not an ONNX Runtime key.
    Unknown,
    /// The key's value is not one it takes; says what it takes.
    Expected(&'static str),
}

impl OrtParameters {
    /// Reads one `parameters` entry.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ParameterError> {
        let expected = KEYS
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, e)| *e)
            .ok_or(ParameterError::Unknown)?;
        let wrong = ParameterError::Expected(expected);
        let flag = || match value {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(wrong),
        };
        let count = || match value.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(wrong),
        };
        match key {
            "io_binding" => self.io_binding = flag()?,
            "cuda_graph" => self.cuda_graph = Some(flag()?),
            "intra_op_thread_count" => self.intra_op_threads = Some(count()?),
            "inter_op_thread_count" => self.inter_op_threads = count()?,
            "intra_op_spinning" => self.intra_op_spinning = flag()?,
            "cudnn_conv_algo_search" => {
                self.cudnn_exhaustive = match value {
                    "EXHAUSTIVE" => true,
                    "HEURISTIC" => false,
                    _ => return Err(wrong),
                }
            }
            "cudnn_conv_use_max_workspace" => self.cudnn_max_workspace = flag()?,
            "arena_extend_strategy" => {
                self.arena_same_as_requested = match value {
                    "kSameAsRequested" => true,
                    "kNextPowerOfTwo" => false,
                    _ => return Err(wrong),
                }
            }
            "tensorrt" => self.tensorrt = flag()?,
            "trt_fp16" => self.trt_fp16 = flag()?,
            "trt_engine_cache_path" => self.trt_engine_cache = Some(PathBuf::from(value)),
            _ => return Err(ParameterError::Unknown),
        }
        Ok(())
    }

    /// The session options for a model run by `instances` instances on `gpu` (None: CPU).
    pub fn options(&self, instances: usize, gpu: Option<GpuPlacement>) -> OrtOptions {
        let cores = crate::cpus::available();
        OrtOptions {
            // Instances split the cores between them, so that they do not oversubscribe.
            intra_op_threads: self
                .intra_op_threads
                .unwrap_or((cores / instances.max(1)).max(1)),
            inter_op_threads: self.inter_op_threads,
            intra_op_spinning: self.intra_op_spinning,
            io_binding: self.io_binding,
            gpu: gpu.map(|placement| GpuOptions {
                device_id: placement.device_id,
                memory_limit: placement.memory_limit,
                cudnn_exhaustive: self.cudnn_exhaustive,
                cudnn_max_workspace: self.cudnn_max_workspace,
                arena_same_as_requested: self.arena_same_as_requested,
                cuda_graph: self.cuda_graph,
                tensorrt: self.tensorrt.then(|| TensorRtOptions {
                    fp16: self.trt_fp16,
                    engine_cache: self.trt_engine_cache.clone(),
                }),
            }),
        }
    }
}

/// Where a GPU model runs: its device and each instance's memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuPlacement {
    pub device_id: i32,
    pub memory_limit: Option<usize>,
}

/// How one model's sessions are set up.
#[derive(Debug, Clone, PartialEq)]
pub struct OrtOptions {
    pub intra_op_threads: usize,
    pub inter_op_threads: usize,
    pub intra_op_spinning: bool,
    /// Run through IoBinding: inputs copied into buffers bound once per shape (device
    /// memory on a GPU), outputs left in buffers bound after the first run of that shape.
    pub io_binding: bool,
    pub gpu: Option<GpuOptions>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GpuOptions {
    pub device_id: i32,
    /// The CUDA arena's cap (`gpu_mem_limit`), from the instance's memory budget.
    pub memory_limit: Option<usize>,
    /// Exhaustive cuDNN convolution search (slow first call, best kernels) or heuristic.
    pub cudnn_exhaustive: bool,
    /// Let cuDNN take as much workspace as its best algorithm wants (ONNX Runtime's
    /// default); false caps it, at some speed, for less arena growth.
    pub cudnn_max_workspace: bool,
    /// Grow the arena by what is asked or by powers of two (fewer, larger device
    /// allocations; less fragmentation, so often less held). Capped by `memory_limit`
    /// either way.
    pub arena_same_as_requested: bool,
    /// Try TensorRT first, with these settings.
    pub tensorrt: Option<TensorRtOptions>,
    /// Capture each session's run as a CUDA graph and replay it (one fixed shape per
    /// session, I/O bound at fixed device addresses). None: wherever every call has a fixed
    /// shape (padded to batch sizes, other dims fixed). Where ONNX Runtime refuses (nodes
    /// off the CUDA provider, control flow) or a replay disagrees with a plain run, sessions
    /// run plainly and the log says why.
    pub cuda_graph: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorRtOptions {
    pub fp16: bool,
    pub engine_cache: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses_into_its_field_and_refuses_what_it_does_not_take() {
        let mut p = OrtParameters::default();
        for (key, value) in [
            ("io_binding", "true"),
            ("cuda_graph", "false"),
            ("intra_op_thread_count", "3"),
            ("inter_op_thread_count", "2"),
            ("cudnn_conv_algo_search", "EXHAUSTIVE"),
            ("cudnn_conv_use_max_workspace", "false"),
            ("arena_extend_strategy", "kSameAsRequested"),
            ("tensorrt", "true"),
            ("trt_fp16", "true"),
            ("trt_engine_cache_path", "/cache"),
        ] {
            p.set(key, value).unwrap();
        }
        let options = p.options(
            2,
            Some(GpuPlacement {
                device_id: 1,
                memory_limit: Some(64),
            }),
        );
        assert_eq!((options.intra_op_threads, options.inter_op_threads), (3, 2));
        assert!(options.io_binding);
        let gpu = options.gpu.unwrap();
        assert_eq!((gpu.device_id, gpu.memory_limit), (1, Some(64)));
        assert!(gpu.cudnn_exhaustive && !gpu.cudnn_max_workspace && gpu.arena_same_as_requested);
        assert_eq!(gpu.cuda_graph, Some(false));
        let trt = gpu.tensorrt.unwrap();
        assert!(trt.fp16);
        assert_eq!(trt.engine_cache, Some(PathBuf::from("/cache")));

        assert_eq!(
            p.set("intra_op_thread_count", "0"),
            Err(ParameterError::Expected("a whole number >= 1"))
        );
        assert_eq!(
            p.set("arena_extend_strategy", "kDouble"),
            Err(ParameterError::Expected(
                "kNextPowerOfTwo or kSameAsRequested"
            ))
        );
        assert_eq!(
            p.set("io_binding", "yes"),
            Err(ParameterError::Expected("true or false"))
        );
        assert_eq!(p.set("threads", "2"), Err(ParameterError::Unknown));
    }

    #[test]
    fn defaults_take_onnx_runtime_defaults_and_split_the_cores() {
        let options = OrtParameters::default().options(1, None);
        assert!(options.gpu.is_none() && !options.io_binding);
        assert_eq!(options.inter_op_threads, 1);
        let cores = crate::cpus::available();
        assert_eq!(options.intra_op_threads, cores);
        let gpu = OrtParameters::default()
            .options(
                64,
                Some(GpuPlacement {
                    device_id: 0,
                    memory_limit: None,
                }),
            )
            .gpu
            .unwrap();
        assert!(!gpu.cudnn_exhaustive && gpu.cudnn_max_workspace && !gpu.arena_same_as_requested);
        assert_eq!(gpu.cuda_graph, None);
        assert!(gpu.tensorrt.is_none());
    }
}
