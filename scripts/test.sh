#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (real server on loopback), then the
# KServe conformance and onnxruntime parity suite through the real tritonclient package,
# and the metrics checked by a real Prometheus and promtool.
# The venv it makes also provides the ONNX Runtime library (onnxruntime==1.31.1 wheel) that
# the onnxruntime backend loads, and the PP-OCR det/rec models are fetched if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Prometheus and promtool (Debian's package) for the metrics tests; the CJK and Latin
# fonts the PP-OCR tests render their pages with (tests/python/ocr_images.py).
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null \
    || [ ! -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] \
    || [ ! -f /usr/share/fonts/truetype/arphic/ukai.ttc ] \
    || [ ! -f /usr/share/fonts/truetype/liberation2/LiberationSerif-Regular.ttf ]; then
    sudo=$([ "$(id -u)" = 0 ] || echo sudo)
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq prometheus \
        fonts-noto-cjk fonts-wqy-zenhei fonts-arphic-uming fonts-arphic-ukai fonts-dejavu-core fonts-liberation2 >/dev/null
fi

venv=.venv-test
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
ORT_DYLIB_PATH=$("$venv/bin/python" -c 'import glob, os, onnxruntime; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.*"))[0])')
export ORT_DYLIB_PATH
[ -f models/ppocr_rec/1/model.onnx ] && [ -f models/ppocr_det/1/model.onnx ] || PATH="$PWD/$venv/bin:$PATH" scripts/fetch-ppocr-models.sh

# One build: the integration tests build the `wharf` binary (target/release/wharf) with the
# test build's features, which the Python suite then runs. A separate `cargo build` would
# build most of the tree a second time (the dev-dependencies add features to libc and
# tokio, which nearly every crate sits on).
cargo test --release --locked
# Where a Docker engine runs, the container test packs a static binary (FROM scratch).
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
        --no-default-features --target x86_64-unknown-linux-gnu --target-dir target/static
else
    echo "no Docker engine: the container build-and-run test will skip"
fi
WHARF_BIN="$PWD/target/release/wharf" "$venv/bin/python" -m pytest -q tests/python
