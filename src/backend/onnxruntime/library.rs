//! Where the ONNX Runtime library is found when no path is given, and whether it opens:
//! the operator's path (`--onnxruntime-lib`, `ORT_DYLIB_PATH`) first; else beside the
//! wharf binary (the container image), else in the data folder the set-up script fills
//! (`$XDG_DATA_HOME/wharf/onnxruntime`, by default `~/.local/share/wharf/onnxruntime`).

use std::path::{Path, PathBuf};

/// The library's file name for the release this build is made against.
pub fn file_name() -> String {
    format!("libonnxruntime.so.{}.1", super::WANTED_VERSION_TEXT)
}

/// The places searched, in order, when no path is given.
pub fn default_places() -> Vec<PathBuf> {
    let mut places = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned))
    {
        places.push(dir.join(file_name()));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    if let Some(data) = data {
        places.push(data.join("wharf/onnxruntime").join(file_name()));
    }
    places
}

/// The library to open: the one given, else the first of `default_places` that exists.
pub fn locate(given: Option<&Path>) -> Option<PathBuf> {
    given
        .map(Path::to_owned)
        .or_else(|| default_places().into_iter().find(|p| p.is_file()))
}

/// Why no library would be opened, for a log line: the places searched.
pub fn not_found() -> String {
    let places: Vec<String> = default_places()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    format!(
        "none given (--onnxruntime-lib, ORT_DYLIB_PATH) and none at {} \
         (scripts/fetch-ppocr-models.sh puts one there)",
        places.join(" or ")
    )
}
