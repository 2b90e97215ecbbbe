//! Compiles the KServe v2 protos with a vendored protoc, so `cargo build` needs nothing else.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts run single-threaded, so setting the variable is sound;
    // prost-build reads PROTOC. (The one unsafe block outside the ONNX Runtime engine.)
    #[allow(unsafe_code)]
    unsafe {
        env::set_var("PROTOC", protoc)
    };
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Tensor payloads as `Bytes`, so they are sliced and passed on rather than copied.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .file_descriptor_set_path(out.join("inference_descriptor.bin"))
        .compile_protos(
            &["proto/grpc_service.proto", "proto/model_config.proto"],
            &["proto"],
        )?;
    // Without the protos' comments (Triton's model_config.proto is mostly documentation):
    // the set is compiled into the binary for reflection and the config reader, which
    // need names and numbers only.
    let descriptors = out.join("inference_descriptor.bin");
    let mut set = <prost_types::FileDescriptorSet as prost::Message>::decode(
        std::fs::read(&descriptors)?.as_slice(),
    )?;
    for file in &mut set.file {
        file.source_code_info = None;
    }
    std::fs::write(&descriptors, prost::Message::encode_to_vec(&set))?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
